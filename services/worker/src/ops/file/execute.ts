/**
 * FileOp executor with BuildKit's semantics (solver/llbsolver/ops/file.go + file/backend.go).
 *
 * Integer fields follow proto3: an unset field is 0 (the LLB builder omits zeros), so `input`,
 * `secondaryInput` and `output` default to 0, a copy's `mode` to 0 (-1 keeps) and timestamps to
 * the epoch (-1 is none).
 *
 * Each action works on its own mutable target: a copy of its `input` (an op input, an earlier
 * action's result, or scratch). An earlier result used by exactly one later action, as its input,
 * and by nothing else, is mutated in place instead of copied. Only actions that contribute to an
 * output run. `secondaryInput` (the copy source) and the roots used for user-name lookups are
 * read, never written. Every path is resolved inside its root (see `resolveInRoot` in `@kiln/layers`).
 */
import { realpath } from 'node:fs/promises';
import type { Long, pb } from '@kiln/protocol';
import { KilnError } from '@kiln/protocol';
import {
  FsError,
  FsErrorCode,
  copyPath,
  detectArchive,
  errnoOf,
  lstatOrUndefined,
  mkdirAll,
  mkdirAllResolved,
  mkdirOne,
  removeInRoot,
  resolveInRoot,
  resolveWildcards,
  unpackArchive,
  writeFileInRoot,
  applyMeta,
} from '../../fs/index.js';
import type { Owner } from '../../fs/index.js';
import { symlink } from 'node:fs/promises';
import { LayerError, LayerErrorCode } from '@kiln/layers';
import type { TarLimits } from '@kiln/layers';
import { FileOpError, FileOpErrorCode } from './errors.js';
import { resolveOwner } from './user.js';
import type { RootForInput } from './user.js';

/**
 * Makes a fresh directory the caller may modify, holding a copy of `from` (empty when undefined).
 * The worker passes snapshot-backed implementations (an overlay upper over `from`, or `from`
 * itself when it is used only once); {@link copyingMutable} is the plain-copy fallback.
 */
export type MutableFactory = (from: string | undefined) => Promise<string>;

export interface ExecuteFileOpOptions {
  /** Makes the mutable target of an action. */
  mutable: MutableFactory;
  /** Called for intermediate targets that are not outputs, once the op is done (or failed). */
  discard?: (dir: string) => Promise<void>;
  /**
   * Applied to the modes of mkdir/mkfile and of created parents, as buildkitd's umask. Default 0:
   * buildkitd runs with umask 0, so an LLB mode is the mode made (the differential test against
   * BuildKit v0.11.6, `test/src/e2e/buildkit-differential.test.ts`).
   */
  umask?: number;
  /** Bounds on what an archive ADD unpacks may unpack to (the worker's unpack limits). */
  unpack?: TarLimits;
}

export interface FileOpResult {
  /** Directory of each output, indexed by `FileAction.output`. */
  outputs: string[];
}

type Int64 = number | Long | null | undefined;

/** An integer field; unset reads as `dflt` (0 for proto3 scalars, as the builder omits zeros). */
function int64(v: Int64, dflt: number): number {
  if (v === null || v === undefined) return dflt;
  return typeof v === 'number' ? v : v.toNumber();
}

/** A FileAction timestamp (unix nanoseconds, -1 = none; unset is 0 as on the wire) as a Date. */
function timeOf(v: Int64): Date | undefined {
  if (v === null || v === undefined) return new Date(0);
  const ns = typeof v === 'number' ? BigInt(Math.trunc(v)) : BigInt(v.toString());
  if (ns === -1n) return undefined;
  return new Date(Number(ns / 1_000_000n));
}

interface ActionRefs {
  input: number;
  secondary: number;
  userInputs: number[];
}

function chownInputs(o: pb.IChownOpt | null | undefined): number[] {
  const out: number[] = [];
  if (o?.user?.byName) out.push(int64(o.user.byName.input, 0));
  if (o?.group?.byName) out.push(int64(o.group.byName.input, 0));
  return out;
}

function refsOf(a: pb.IFileAction): ActionRefs {
  const owner = a.copy?.owner ?? a.mkdir?.owner ?? a.mkfile?.owner ?? a.symlink?.owner;
  return {
    input: int64(a.input, 0),
    secondary: a.copy ? int64(a.secondaryInput, 0) : -1,
    userInputs: chownInputs(owner),
  };
}

/**
 * The op inputs (indices below `n`) whose files some action reads: copy sources and the roots of
 * user and group name lookups. Any other input is only the base of a mutable target (made from
 * its snapshot by `opts.mutable`), so its directory is never read and need not be mounted.
 */
export function inputsRead(op: pb.IFileOp, n: number): Set<number> {
  const read = new Set<number>();
  for (const r of (op.actions ?? []).map(refsOf))
    for (const x of [r.secondary, ...r.userInputs]) if (x >= 0 && x < n) read.add(x);
  return read;
}

/**
 * Runs `op` over `inputs` (the root directory of each op input; undefined reads as empty) and
 * returns the output directories. Inputs are never modified (copies are made through
 * `opts.mutable`). Failures are {@link FileOpError}s naming the action index and path.
 */
export async function executeFileOp(
  op: pb.IFileOp,
  inputs: readonly (string | undefined)[],
  opts: ExecuteFileOpOptions,
): Promise<FileOpResult> {
  const actions = op.actions ?? [];
  const n = inputs.length;
  if (actions.length === 0) throw new FileOpError(FileOpErrorCode.Failed, 'file op has no actions');
  const refs = actions.map(refsOf);
  const outOf = actions.map((a) => int64(a.output, 0));
  if (outOf.every((o) => o < 0)) outOf[outOf.length - 1] = 0;

  // Which actions are needed (reachable from an output), and how often each result is used.
  const needed = new Array<boolean>(actions.length).fill(false);
  const mark = (idx: number): void => {
    const ai = idx - n;
    if (idx < n || ai < 0 || ai >= actions.length || needed[ai]) return;
    needed[ai] = true;
    const r = refs[ai]!;
    for (const x of [r.input, r.secondary, ...r.userInputs]) mark(x);
  };
  outOf.forEach((o, i) => {
    if (o >= 0) mark(n + i);
  });
  const uses = new Array<number>(actions.length).fill(0);
  refs.forEach((r, i) => {
    if (!needed[i]) return;
    for (const x of [r.input, r.secondary, ...r.userInputs]) {
      if (x >= n && x - n < actions.length) uses[x - n]!++;
    }
  });
  outOf.forEach((o, i) => {
    if (o >= 0) uses[i]!++;
  });

  const results: (string | undefined)[] = new Array<string | undefined>(actions.length).fill(
    undefined,
  );
  const consumed = new Set<number>();
  const umask = opts.umask ?? 0;

  const rootOf = (idx: number, action: number): string | undefined => {
    if (idx < 0) return undefined;
    if (idx < n) return inputs[idx];
    const r = results[idx - n];
    if (r === undefined) {
      throw new FileOpError(
        FileOpErrorCode.Failed,
        `input index ${idx} refers to a later or unknown action`,
        {
          actionIndex: action,
        },
      );
    }
    return r;
  };

  try {
    for (let i = 0; i < actions.length; i++) {
      if (!needed[i]) continue;
      const a = actions[i]!;
      const r = refs[i]!;
      try {
        let target: string;
        const base = r.input;
        if (base >= n && uses[base - n] === 1 && outOf[base - n]! < 0) {
          target = rootOf(base, i)!;
          consumed.add(base - n);
        } else {
          target = await opts.mutable(rootOf(base, i));
        }
        results[i] = target;
        const root = await realpath(target);
        const rootFor: RootForInput = async (idx) => {
          const d = rootOf(idx, i);
          return d === undefined ? undefined : realpath(d);
        };
        await runAction(a, root, r, rootFor, (idx) => rootOf(idx, i), umask, opts.unpack);
      } catch (err) {
        throw toFileOpError(err, i, pathOf(a));
      }
    }
  } catch (err) {
    await discardAll(opts, results, outOf, consumed, true);
    throw err;
  }
  await discardAll(opts, results, outOf, consumed, false);
  const outputs: string[] = [];
  outOf.forEach((o, i) => {
    if (o >= 0) outputs[o] = results[i]!;
  });
  return { outputs };
}

async function discardAll(
  opts: ExecuteFileOpOptions,
  results: (string | undefined)[],
  outOf: number[],
  consumed: Set<number>,
  all: boolean,
): Promise<void> {
  if (!opts.discard) return;
  for (let i = 0; i < results.length; i++) {
    const r = results[i];
    if (r === undefined || consumed.has(i) || (!all && outOf[i]! >= 0)) continue;
    await opts.discard(r);
  }
}

function pathOf(a: pb.IFileAction): string | undefined {
  return (
    a.copy?.dest ?? a.mkdir?.path ?? a.mkfile?.path ?? a.rm?.path ?? a.symlink?.newpath ?? undefined
  );
}

async function runAction(
  a: pb.IFileAction,
  root: string,
  r: ActionRefs,
  rootFor: RootForInput,
  rootOf: (idx: number) => string | undefined,
  umask: number,
  unpack: TarLimits | undefined,
): Promise<void> {
  if (a.mkdir) {
    const m = a.mkdir;
    const owner = await resolveOwner(m.owner, rootFor);
    const meta = { mode: (m.mode ?? 0) & 0o777 & ~umask, owner, time: timeOf(m.timestamp) };
    if (m.makeParents) await mkdirAll(root, m.path ?? '', meta);
    else await mkdirOne(root, m.path ?? '', meta);
    return;
  }
  if (a.mkfile) {
    const m = a.mkfile;
    const owner = await resolveOwner(m.owner, rootFor);
    const meta = { mode: (m.mode ?? 0) & 0o777 & ~umask, owner, time: timeOf(m.timestamp) };
    await writeFileInRoot(root, m.path ?? '', m.data ?? new Uint8Array(), meta);
    return;
  }
  if (a.rm) {
    const m = a.rm;
    const paths = m.allowWildcard
      ? await resolveWildcards(root, m.path ?? '', false)
      : [m.path ?? ''];
    for (const p of paths) await removeInRoot(root, p, m.allowNotFound ?? false);
    return;
  }
  if (a.symlink) {
    const m = a.symlink;
    const owner = await resolveOwner(m.owner, rootFor);
    const host = await resolveInRoot(root, m.newpath ?? '');
    await symlink(m.oldpath ?? '', host);
    await applyMeta(host, { owner, time: timeOf(m.timestamp) }, true);
    return;
  }
  if (a.copy) {
    const srcDir = rootOf(r.secondary);
    const srcRoot = srcDir === undefined ? undefined : await realpath(srcDir);
    const owner = await resolveOwner(a.copy.owner, rootFor);
    await runCopy(a.copy, srcRoot, root, owner, umask, unpack);
    return;
  }
  throw new FileOpError(FileOpErrorCode.Failed, 'unknown file action');
}

async function runCopy(
  c: pb.IFileActionCopy,
  srcRoot: string | undefined,
  dstRoot: string,
  owner: Owner | undefined,
  umask: number,
  unpack: TarLimits | undefined,
): Promise<void> {
  const src = c.src ?? '';
  const dest = c.dest ?? '';
  const time = timeOf(c.timestamp);
  if (!c.createDestPath) {
    const p = await resolveInRoot(dstRoot, dest);
    const parent = p === dstRoot ? p : p.slice(0, p.lastIndexOf('/')) || '/';
    if ((await lstatOrUndefined(parent)) === undefined) {
      throw new FileOpError(FileOpErrorCode.NotFound, 'destination directory does not exist', {
        path: dest,
      });
    }
  }
  let matches: string[];
  if (srcRoot === undefined) {
    matches = [];
  } else {
    matches = c.allowWildcard
      ? await resolveWildcards(srcRoot, src, c.followSymlink ?? false)
      : [src];
  }
  if (matches.length === 0) {
    if (c.allowWildcard && c.allowEmptyWildcard) return;
    throw new FileOpError(FileOpErrorCode.NotFound, `${src} not found`, { path: src });
  }
  if (matches.length > 1 && !dest.endsWith('/')) {
    const st = await lstatOrUndefined(await resolveInRoot(dstRoot, dest));
    if (!st?.isDirectory()) {
      throw new FileOpError(
        FileOpErrorCode.Failed,
        `${matches.length} sources match ${src}: the destination must be a directory (end it with /)`,
        { path: dest },
      );
    }
  }
  const mode = int64(c.mode, 0);
  for (const m of matches) {
    if (c.attemptUnpackDockerCompatibility) {
      const srcHost = await resolveInRoot(srcRoot!, m);
      const compression = await detectArchive(srcHost);
      if (compression !== undefined) {
        const destHost = await resolveInRoot(dstRoot, dest);
        await mkdirAllResolved(dstRoot, destHost, { mode: 0o755 & ~umask, owner, time });
        // The archive's entries keep their own owners: `--chown` applies to the directories
        // made for the destination only (BuildKit v0.11.6, checked by the differential test).
        await unpackArchive(srcHost, compression, destHost, { limits: unpack });
        continue;
      }
    }
    await copyPath(srcRoot!, m, dstRoot, dest, {
      owner,
      mode: mode === -1 ? undefined : mode,
      time,
      followSymlinks: c.followSymlink ?? false,
      copyDirContents: c.dirCopyContents ?? false,
      includePatterns: c.includePatterns ?? [],
      excludePatterns: c.excludePatterns ?? [],
      alwaysReplaceExistingDestPaths: c.alwaysReplaceExistingDestPaths ?? false,
      parentMode: 0o755 & ~umask,
    });
  }
}

const FS_CODES: Record<FsErrorCode, FileOpErrorCode> = {
  [FsErrorCode.Unsafe]: FileOpErrorCode.UnsafePath,
  [FsErrorCode.SymlinkLoop]: FileOpErrorCode.SymlinkLoop,
  [FsErrorCode.NotFound]: FileOpErrorCode.NotFound,
  [FsErrorCode.BadPattern]: FileOpErrorCode.BadPattern,
  [FsErrorCode.Conflict]: FileOpErrorCode.Failed,
  [FsErrorCode.BadArchive]: FileOpErrorCode.Failed,
};

function toFileOpError(
  err: unknown,
  actionIndex: number,
  actionPath: string | undefined,
): FileOpError {
  if (err instanceof FileOpError) {
    if (err.actionIndex !== undefined) return err;
    return new FileOpError(err.code, err.message, {
      cause: err.cause ?? err,
      actionIndex,
      path: err.path ?? actionPath,
      details: err.details,
    });
  }
  if (err instanceof FsError) {
    return new FileOpError(FS_CODES[err.code], err.message, {
      cause: err,
      actionIndex,
      path: err.path ?? actionPath,
      details: err.details,
    });
  }
  if (err instanceof LayerError && err.code === LayerErrorCode.LimitExceeded) {
    return new FileOpError(FileOpErrorCode.UnpackLimit, err.message, {
      cause: err,
      actionIndex,
      path: actionPath,
      details: err.details,
    });
  }
  if (err instanceof KilnError) {
    return new FileOpError(FileOpErrorCode.Failed, err.message, {
      cause: err,
      actionIndex,
      path: actionPath,
    });
  }
  const code = errnoOf(err);
  const kind =
    code === 'ENOENT'
      ? FileOpErrorCode.NotFound
      : code === 'ELOOP'
        ? FileOpErrorCode.SymlinkLoop
        : FileOpErrorCode.Failed;
  const msg = err instanceof Error ? err.message : String(err);
  return new FileOpError(kind, stripHostPaths(msg), { cause: err, actionIndex, path: actionPath });
}

/** Node's messages name host paths; the action path is reported separately, so keep the errno part. */
function stripHostPaths(msg: string): string {
  const i = msg.indexOf(', ');
  return i > 0 ? msg.slice(0, i) : msg;
}
