import { posix } from 'node:path';
import { toLong } from '@kiln/protocol';
import type { Long, pb } from '@kiln/protocol';
import { Caps } from './constants.js';
import type { State } from './state.js';
import {
  Output,
  addCaps,
  buildError,
  finishOp,
  inputsEqual,
  marshalConstraints,
} from './vertex.js';
import type { Constraints, MarshaledVertex, Vertex, MarshalContext } from './vertex.js';

/** A user or group: a numeric id, or a name resolved against the target's /etc/passwd and group. */
export type UserSpec = number | string;

export interface ChownSpec {
  user?: UserSpec;
  group?: UserSpec;
}

/** Parses `user[:group]` the way BuildKit's WithUser does (`root` and numbers are ids). */
export function parseChown(spec: string): ChownSpec {
  const [u, g] = spec.split(':', 2) as [string, string | undefined];
  const one = (v: string): UserSpec => {
    if (v === 'root') return 0;
    return /^-?\d+$/.test(v) && Number(v) <= 0x7fffffff && Number(v) >= -0x80000000 ? Number(v) : v;
  };
  const out: ChownSpec = { user: one(u) };
  if (g !== undefined) out.group = one(g);
  return out;
}

/** A time as Unix nanoseconds (bigint), a Date, or undefined (BuildKit writes -1 then). */
export type CreatedTime = Date | bigint;

export interface MkdirOptions {
  makeParents?: boolean;
  chown?: ChownSpec | string;
  createdTime?: CreatedTime;
}

export interface MkfileOptions {
  chown?: ChownSpec | string;
  createdTime?: CreatedTime;
}

export interface RmOptions {
  allowNotFound?: boolean;
  allowWildcard?: boolean;
}

export interface CopyOptions {
  /** Permission bits for copied files; unset keeps the source's. */
  mode?: number;
  followSymlinks?: boolean;
  copyDirContentsOnly?: boolean;
  includePatterns?: string[];
  excludePatterns?: string[];
  attemptUnpack?: boolean;
  createDestPath?: boolean;
  allowWildcard?: boolean;
  allowEmptyWildcard?: boolean;
  chown?: ChownSpec | string;
  createdTime?: CreatedTime;
  alwaysReplaceExistingDestPaths?: boolean;
}

export interface SymlinkOptions {
  chown?: ChownSpec | string;
  createdTime?: CreatedTime;
}

interface SubAction {
  toProto(parentDir: string, base: number): pb.IFileAction;
  caps(): string[];
}

function chownOf(c: ChownSpec | string | undefined): ChownSpec | undefined {
  return typeof c === 'string' ? parseChown(c) : c;
}

function marshalUser(u: UserSpec | undefined, base: number): pb.IUserOpt | undefined {
  if (u === undefined) return undefined;
  if (typeof u === 'string' && u !== '') {
    const named: pb.INamedUserOpt = { name: u };
    if (base !== 0) named.input = base;
    return { byName: named };
  }
  // A oneof member is written even when zero: byID 0 is root.
  return { byID: typeof u === 'number' ? u >>> 0 : 0 };
}

function marshalChown(c: ChownSpec | undefined, base: number): pb.IChownOpt | undefined {
  if (!c) return undefined;
  const out: pb.IChownOpt = {};
  const user = marshalUser(c.user, base);
  const group = marshalUser(c.group, base);
  if (user) out.user = user;
  if (group) out.group = group;
  return out;
}

function marshalTime(t: CreatedTime | undefined): Long | number {
  if (t === undefined) return -1;
  if (t instanceof Date) return toLong(BigInt(t.getTime()) * 1_000_000n);
  return toLong(t);
}

/** Cleans `p` and makes it absolute against `parent` (BuildKit's normalizePath). */
function normalizePath(parent: string, p: string, keepSlash: boolean): string {
  const orig = p;
  p = posix.normalize(p);
  if (p.length > 1 && p.endsWith('/')) p = p.slice(0, -1);
  if (!posix.isAbsolute(p)) p = posix.join('/', parent, p);
  if (p.length > 1 && p.endsWith('/')) p = p.slice(0, -1);
  if (keepSlash) {
    if (orig.endsWith('/') && !p.endsWith('/')) p += '/';
    else if (orig.endsWith('/.')) {
      if (p !== '/') p += '/';
      p += '.';
    }
  }
  return p;
}

function setIf<T extends object, K extends keyof T>(
  o: T,
  k: K,
  v: T[K] | undefined | false | '' | 0,
): void {
  if (v !== undefined && v !== false && v !== '' && v !== 0) o[k] = v;
}

class MkdirAction implements SubAction {
  constructor(
    private readonly path: string,
    private readonly mode: number,
    private readonly o: MkdirOptions,
  ) {}

  toProto(parent: string, base: number): pb.IFileAction {
    const a: pb.IFileActionMkDir = { path: normalizePath(parent, this.path, false) };
    setIf(a, 'mode', this.mode & 0o777);
    setIf(a, 'makeParents', this.o.makeParents);
    setIf(a, 'owner', marshalChown(chownOf(this.o.chown), base));
    a.timestamp = marshalTime(this.o.createdTime);
    return { mkdir: a };
  }

  caps(): string[] {
    return [];
  }
}

class MkfileAction implements SubAction {
  constructor(
    private readonly path: string,
    private readonly mode: number,
    private readonly data: Uint8Array,
    private readonly o: MkfileOptions,
  ) {}

  toProto(parent: string, base: number): pb.IFileAction {
    const a: pb.IFileActionMkFile = { path: normalizePath(parent, this.path, false) };
    setIf(a, 'mode', this.mode & 0o777);
    if (this.data.length > 0) a.data = this.data;
    setIf(a, 'owner', marshalChown(chownOf(this.o.chown), base));
    a.timestamp = marshalTime(this.o.createdTime);
    return { mkfile: a };
  }

  caps(): string[] {
    return [];
  }
}

class RmAction implements SubAction {
  constructor(
    private readonly path: string,
    private readonly o: RmOptions,
  ) {}

  toProto(parent: string): pb.IFileAction {
    const a: pb.IFileActionRm = { path: normalizePath(parent, this.path, false) };
    setIf(a, 'allowNotFound', this.o.allowNotFound);
    setIf(a, 'allowWildcard', this.o.allowWildcard);
    return { rm: a };
  }

  caps(): string[] {
    return [];
  }
}

class SymlinkAction implements SubAction {
  constructor(
    private readonly oldpath: string,
    private readonly newpath: string,
    private readonly o: SymlinkOptions,
  ) {}

  toProto(parent: string, base: number): pb.IFileAction {
    const a: pb.IFileActionSymlink = {};
    setIf(a, 'oldpath', this.oldpath);
    setIf(a, 'newpath', normalizePath(parent, this.newpath, false));
    setIf(a, 'owner', marshalChown(chownOf(this.o.chown), base));
    a.timestamp = marshalTime(this.o.createdTime);
    return { symlink: a };
  }

  caps(): string[] {
    return [Caps.fileSymlink];
  }
}

class CopyAction implements SubAction {
  constructor(
    readonly source: CopyInput,
    private readonly src: string,
    private readonly dest: string,
    private readonly o: CopyOptions,
  ) {}

  private sourcePath(): string {
    const p = posix.normalize(this.src);
    let dir = '/';
    if (!posix.isAbsolute(p)) {
      const st =
        this.source instanceof FileActionWithState ? this.source.action.state : this.source;
      dir = st?.getDir() || '/';
    }
    let out = posix.join(dir, p);
    if (out.length > 1 && out.endsWith('/')) out = out.slice(0, -1);
    return out;
  }

  toProto(parent: string, base: number): pb.IFileAction {
    const o = this.o;
    const a: pb.IFileActionCopy = {
      src: this.sourcePath(),
      dest: normalizePath(parent, this.dest, true),
    };
    setIf(a, 'owner', marshalChown(chownOf(o.chown), base));
    a.mode = o.mode === undefined ? -1 : o.mode;
    if (a.mode === 0) delete a.mode;
    setIf(a, 'followSymlink', o.followSymlinks);
    setIf(a, 'dirCopyContents', o.copyDirContentsOnly);
    setIf(a, 'attemptUnpackDockerCompatibility', o.attemptUnpack);
    setIf(a, 'createDestPath', o.createDestPath);
    setIf(a, 'allowWildcard', o.allowWildcard);
    setIf(a, 'allowEmptyWildcard', o.allowEmptyWildcard);
    a.timestamp = marshalTime(o.createdTime);
    if (o.includePatterns?.length) a.includePatterns = [...o.includePatterns];
    if (o.excludePatterns?.length) a.excludePatterns = [...o.excludePatterns];
    setIf(a, 'alwaysReplaceExistingDestPaths', o.alwaysReplaceExistingDestPaths);
    return { copy: a };
  }

  caps(): string[] {
    return [];
  }
}

/** What a copy reads from: a State, or another action chain bound to a state (`withState`). */
export type CopyInput = State | FileActionWithState;

/**
 * One file action, possibly chained after others (`mkdir(...).mkfile(...)`). Chains are
 * immutable; `state.file(chain)` binds a chain to the state it applies to.
 */
export class FileAction {
  /** @internal */
  constructor(
    readonly action: SubAction,
    readonly prev: FileAction | undefined,
    readonly state: State | undefined,
  ) {}

  mkdir(path: string, mode: number, opts: MkdirOptions = {}): FileAction {
    return new FileAction(new MkdirAction(path, mode, opts), this, undefined);
  }

  mkfile(
    path: string,
    mode: number,
    data: Uint8Array | string,
    opts: MkfileOptions = {},
  ): FileAction {
    return new FileAction(new MkfileAction(path, mode, toBytes(data), opts), this, undefined);
  }

  rm(path: string, opts: RmOptions = {}): FileAction {
    return new FileAction(new RmAction(path, opts), this, undefined);
  }

  copy(input: CopyInput, src: string, dest: string, opts: CopyOptions = {}): FileAction {
    return new FileAction(new CopyAction(input, src, dest, opts), this, undefined);
  }

  symlink(oldpath: string, newpath: string, opts: SymlinkOptions = {}): FileAction {
    return new FileAction(new SymlinkAction(oldpath, newpath, opts), this, undefined);
  }

  /** This chain bound to `s`: every action in it applies on top of `s`. */
  bind(s: State): FileAction {
    return new FileAction(this.action, this.prev?.bind(s), s);
  }

  /** Use this chain, applied to `s`, as the source of a copy. */
  withState(s: State): FileActionWithState {
    return new FileActionWithState(this.bind(s));
  }

  /** @internal outputs read by this chain, in BuildKit's order (allOutputs). */
  allOutputs(seen: Set<Output>, out: Output[]): Output[] {
    const o = this.state?.output;
    if (o && !seen.has(o)) {
      seen.add(o);
      out.push(o);
    }
    if (this.action instanceof CopyAction) {
      const src = this.action.source;
      if (src instanceof FileActionWithState) src.action.allOutputs(seen, out);
      else if (src.output && !seen.has(src.output)) {
        seen.add(src.output);
        out.push(src.output);
      }
    }
    return this.prev ? this.prev.allOutputs(seen, out) : out;
  }
}

export class FileActionWithState {
  constructor(readonly action: FileAction) {}
}

function toBytes(d: Uint8Array | string): Uint8Array {
  return typeof d === 'string' ? Buffer.from(d, 'utf8') : d;
}

export function mkdir(path: string, mode: number, opts: MkdirOptions = {}): FileAction {
  return new FileAction(new MkdirAction(path, mode, opts), undefined, undefined);
}

export function mkfile(
  path: string,
  mode: number,
  data: Uint8Array | string,
  opts: MkfileOptions = {},
): FileAction {
  return new FileAction(new MkfileAction(path, mode, toBytes(data), opts), undefined, undefined);
}

export function rm(path: string, opts: RmOptions = {}): FileAction {
  return new FileAction(new RmAction(path, opts), undefined, undefined);
}

export function copy(
  input: CopyInput,
  src: string,
  dest: string,
  opts: CopyOptions = {},
): FileAction {
  return new FileAction(new CopyAction(input, src, dest, opts), undefined, undefined);
}

export function symlink(oldpath: string, newpath: string, opts: SymlinkOptions = {}): FileAction {
  return new FileAction(new SymlinkAction(oldpath, newpath, opts), undefined, undefined);
}

interface ActionState {
  base: number;
  input: number;
  inputRelative?: ActionState;
  input2: number;
  input2Relative?: ActionState;
  target: number;
  fa: FileAction;
}

/** FileOp: a chain of file actions applied in one vertex; its output is the last action's result. */
export class FileOp implements Vertex {
  readonly output: Output;
  private readonly action: FileAction;

  constructor(
    state: State,
    action: FileAction,
    private readonly constraints: Constraints,
  ) {
    this.action = action.bind(state);
    this.output = new Output(this, 0);
  }

  inputs(): readonly Output[] {
    return this.action.allOutputs(new Set(), []);
  }

  marshal(ctx: MarshalContext): MarshaledVertex {
    let c = addCaps(this.constraints, Caps.fileBase);
    for (let fa: FileAction | undefined = this.action; fa; fa = fa.prev) {
      const caps = fa.action.caps();
      if (caps.length) c = addCaps(c, ...caps);
    }
    if (!c.platform) {
      const p = this.action.state?.getPlatform();
      if (p) c = { ...c, platform: p };
    }
    const { op, metadata } = marshalConstraints(ctx.constraints, c);

    const inputs: pb.IInput[] = [];
    const actions: ActionState[] = [];
    const visited = new Map<FileAction, ActionState>();
    const addInput = (o: Output): number => {
      const inp = o.toInput(ctx);
      const i = inputs.findIndex((x) => inputsEqual(x, inp));
      if (i >= 0) return i;
      inputs.push(inp);
      return inputs.length - 1;
    };
    const add = (fa: FileAction): ActionState => {
      const known = visited.get(fa);
      if (known) return known;
      const prev = fa.prev ? add(fa.prev) : undefined;
      const st: ActionState = { base: -1, input: -1, input2: -1, target: 0, fa };
      const src = fa.state?.output;
      if (src) st.base = addInput(src);
      if (!prev) st.input = st.base;
      else st.inputRelative = prev;
      if (fa.action instanceof CopyAction) {
        const from = fa.action.source;
        if (from instanceof FileActionWithState) st.input2Relative = add(from.action);
        else if (from.output) st.input2 = addInput(from.output);
      }
      st.target = actions.length;
      visited.set(fa, st);
      actions.push(st);
      return st;
    };
    add(this.action);

    const n = inputs.length;
    const index = (i: number, rel: ActionState | undefined): number => (rel ? n + rel.target : i);
    const pActions: pb.IFileAction[] = actions.map((st, i) => {
      const parent = st.fa.state?.getDir() ?? '';
      const a = st.fa.action.toProto(parent, st.base);
      const input = index(st.input, st.inputRelative);
      const secondary = index(st.input2, st.input2Relative);
      const output = i + 1 === actions.length ? 0 : -1;
      const fa: pb.IFileAction = {};
      if (input !== 0) fa.input = input;
      if (secondary !== 0) fa.secondaryInput = secondary;
      if (output !== 0) fa.output = output;
      return Object.assign(fa, a);
    });
    if (pActions.length === 0) throw buildError('file op: action is required');

    const full: pb.IOp = {};
    if (inputs.length) full.inputs = inputs;
    full.file = { actions: pActions };
    full.platform = op.platform!;
    full.constraints = op.constraints!;
    return finishOp(full, metadata);
  }
}
