import { pb } from '@kiln/protocol';
import { Caps } from './constants.js';
import { InvalidDefinitionError } from './errors.js';
import { normalizePlatform } from '@kiln/protocol';
import type { State } from './state.js';
import {
  MarshalContext,
  constraintsFrom,
  mergeMetadata,
  newId,
  sha256Digest,
  toPbMetadata,
} from './vertex.js';
import type { ConstraintsOptions, OpMeta, Vertex } from './vertex.js';

export type MarshalOptions = ConstraintsOptions;

/**
 * A marshaled graph: op bytes in BuildKit's order (inputs before the ops that read them, the
 * terminal last) and metadata by vertex digest. Bytes are deterministic: the same graph always
 * marshals to the same bytes, identical to BuildKit's Go client.
 */
export class Definition {
  constructor(
    readonly def: readonly Uint8Array[],
    readonly metadata: ReadonlyMap<string, pb.IOpMetadata>,
    readonly source?: pb.ISource,
  ) {}

  toProto(): pb.IDefinition {
    const d: pb.IDefinition = {};
    if (this.def.length) d.def = [...this.def];
    if (this.metadata.size) d.metadata = Object.fromEntries(this.metadata);
    if (this.source) d.Source = this.source;
    return d;
  }

  toBytes(): Uint8Array {
    return pb.Definition.encode(this.toProto()).finish();
  }

  /** Vertex digests, in the order of `def`. */
  digests(): string[] {
    return this.def.map((b) => sha256Digest(b));
  }

  /** Wraps decoded bytes without validating them; see parseDefinition for the validating load. */
  static fromBytes(bytes: Uint8Array): Definition {
    const d = decodeDefinition(bytes);
    return new Definition(d.def, new Map(Object.entries(d.metadata)), d.Source ?? undefined);
  }
}

/** Marshals the graph that ends at `state` (BuildKit's State.Marshal). */
export function marshal(state: State, opts: MarshalOptions = {}): Definition {
  const base = constraintsFrom(opts, {
    ...(opts.platform ? { platform: normalizePlatform(opts.platform) } : {}),
    localUniqueId: opts.localUniqueId ?? newId(),
  });
  const out = state.output;
  if (!out) return new Definition([], new Map());
  const ctx = new MarshalContext(base);
  const def: Uint8Array[] = [];
  const meta = new Map<string, OpMeta>();
  const locations: Record<string, pb.ILocations> = {};
  const seenDigests = new Set<string>();
  const done = new Set<Vertex>();

  // Post-order walk, inputs first, without recursion (graphs may be 10,000s of vertices deep).
  const stack: { v: Vertex; inputs: readonly { vertex: Vertex }[]; i: number }[] = [];
  const push = (v: Vertex): void => {
    stack.push({ v, inputs: v.inputs(), i: 0 });
  };
  push(out.vertex);
  while (stack.length > 0) {
    const top = stack[stack.length - 1]!;
    if (top.i < top.inputs.length) {
      const child = top.inputs[top.i++]!.vertex;
      if (!done.has(child)) push(child);
      continue;
    }
    stack.pop();
    if (done.has(top.v)) continue;
    const m = ctx.get(top.v);
    done.add(top.v);
    meta.set(m.digest, mergeMetadata(meta.get(m.digest), m.metadata));
    if (seenDigests.has(m.digest)) continue;
    seenDigests.add(m.digest);
    def.push(m.bytes);
    locations[m.digest] = {};
  }

  const terminal = pb.Op.encode({ inputs: [out.toInput(ctx)] }).finish();
  def.push(terminal);
  const tdgst = sha256Digest(terminal);
  const caps: Record<string, true> = { [Caps.constraints]: true, [Caps.platform]: true };
  for (const m of meta.values()) {
    if (m.ignoreCache) caps[Caps.metaIgnoreCache] = true;
    if (m.description) caps[Caps.metaDescription] = true;
    if (m.exportCache !== undefined) caps[Caps.metaExportCache] = true;
  }
  meta.set(tdgst, mergeMetadata(meta.get(tdgst), { caps }));

  const pbMeta = new Map<string, pb.IOpMetadata>();
  for (const [k, v] of meta) pbMeta.set(k, toPbMetadata(v));
  return new Definition(def, pbMeta, { locations });
}

function decodeDefinition(bytes: Uint8Array): pb.Definition {
  try {
    return pb.Definition.decode(bytes);
  } catch (cause) {
    throw new InvalidDefinitionError(
      'LLB_MALFORMED',
      `definition does not decode: ${(cause as Error).message}`,
      { cause },
    );
  }
}

/** One vertex of a loaded definition. */
export interface LoadedOp {
  readonly digest: string;
  readonly bytes: Uint8Array;
  readonly op: pb.Op;
  readonly metadata: pb.IOpMetadata | undefined;
  /** How many outputs the op has; inputs may select 0..outputs-1. */
  readonly outputs: number;
}

export interface OpRef {
  readonly digest: string;
  readonly index: number;
}

/** A validated graph: every op by digest, the terminal's target, and a topological order. */
export interface LoadedDefinition {
  readonly ops: ReadonlyMap<string, LoadedOp>;
  /** The vertex and output the definition evaluates to. */
  readonly result: OpRef;
  /** Digests of every vertex reachable from the result, inputs before the ops that read them. */
  readonly order: readonly string[];
}

export type OpKind = 'exec' | 'source' | 'file' | 'build' | 'merge' | 'diff';

export function opKind(op: pb.IOp): OpKind | undefined {
  if (op.exec) return 'exec';
  if (op.source) return 'source';
  if (op.file) return 'file';
  if (op.build) return 'build';
  if (op.merge) return 'merge';
  if (op.diff) return 'diff';
  return undefined;
}

function num(v: number | { toNumber(): number } | null | undefined): number {
  if (v == null) return 0;
  return typeof v === 'number' ? v : v.toNumber();
}

function countOutputs(op: pb.IOp): number {
  if (op.exec) {
    let n = 0;
    for (const m of op.exec.mounts ?? [])
      if (num(m.output) >= 0) n = Math.max(n, num(m.output) + 1);
    return n;
  }
  if (op.file) {
    let n = 0;
    for (const a of op.file.actions ?? [])
      if (num(a.output) >= 0) n = Math.max(n, num(a.output) + 1);
    return n;
  }
  return 1;
}

/**
 * Decodes and validates a marshaled Definition: every op decodes and has a known kind, the last
 * op is a terminal, every input names an op in the definition and one of its outputs, op-internal
 * indices are in range, and the graph has no cycle. Bad input throws InvalidDefinitionError, never
 * anything else.
 */
export function parseDefinition(input: Uint8Array | pb.IDefinition): LoadedDefinition {
  try {
    const def = input instanceof Uint8Array ? decodeDefinition(input) : input;
    return loadOps(def);
  } catch (e) {
    if (e instanceof InvalidDefinitionError) throw e;
    throw new InvalidDefinitionError(
      'LLB_MALFORMED',
      `invalid definition: ${(e as Error).message}`,
      { cause: e },
    );
  }
}

function loadOps(def: pb.IDefinition): LoadedDefinition {
  const raw = def.def ?? [];
  if (raw.length === 0) throw new InvalidDefinitionError('LLB_EMPTY', 'definition has no ops');
  const ops = new Map<string, LoadedOp>();
  let last: LoadedOp | undefined;
  raw.forEach((bytes, i) => {
    const digest = sha256Digest(bytes);
    let op: pb.Op;
    try {
      op = pb.Op.decode(bytes);
    } catch (cause) {
      throw new InvalidDefinitionError(
        'LLB_MALFORMED',
        `op ${i} does not decode: ${(cause as Error).message}`,
        {
          digest,
          cause,
        },
      );
    }
    const loaded: LoadedOp = {
      digest,
      bytes,
      op,
      metadata: def.metadata?.[digest] ?? undefined,
      outputs: countOutputs(op),
    };
    ops.set(digest, loaded);
    last = loaded;
  });
  const terminal = last!;
  const tInputs = terminal.op.inputs ?? [];
  if (opKind(terminal.op) !== undefined || tInputs.length !== 1) {
    throw new InvalidDefinitionError(
      'LLB_NO_TERMINAL',
      'the last op must be a terminal: no op body and exactly one input',
      { digest: terminal.digest },
    );
  }
  ops.delete(terminal.digest);
  for (const o of ops.values()) validateOp(o, ops);
  const t = tInputs[0]!;
  const result = checkInput(t, terminal.digest, ops);
  return { ops, result, order: topoFrom(result.digest, ops) };
}

function checkInput(inp: pb.IInput, from: string, ops: ReadonlyMap<string, LoadedOp>): OpRef {
  const digest = inp.digest ?? '';
  const target = ops.get(digest);
  if (!target) {
    throw new InvalidDefinitionError(
      'LLB_DANGLING_INPUT',
      `input ${JSON.stringify(digest)} is not in the definition`,
      {
        digest: from,
      },
    );
  }
  const index = num(inp.index);
  if (index < 0 || index >= target.outputs) {
    throw new InvalidDefinitionError(
      'LLB_BAD_OUTPUT_INDEX',
      `input selects output ${index} of ${digest}, which has ${target.outputs}`,
      { digest: from },
    );
  }
  return { digest, index };
}

function validateOp(o: LoadedOp, ops: ReadonlyMap<string, LoadedOp>): void {
  const { op, digest } = o;
  const kind = opKind(op);
  const bad = (msg: string): never => {
    throw new InvalidDefinitionError('LLB_INVALID_OP', msg, { digest });
  };
  if (!kind) throw new InvalidDefinitionError('LLB_UNKNOWN_OP', 'op has no known kind', { digest });
  const inputs = op.inputs ?? [];
  for (const inp of inputs) checkInput(inp, digest, ops);
  const n = inputs.length;
  const inRange = (i: number, extra = 0): boolean => i === -1 || (i >= 0 && i < n + extra);
  switch (kind) {
    case 'exec': {
      const e = op.exec!;
      if (!e.meta || (e.meta.args ?? []).length === 0) bad('exec op has no arguments');
      const mounts = e.mounts ?? [];
      if (!mounts.some((m) => m.dest === '/')) bad('exec op has no root mount');
      for (const m of mounts) {
        if (!m.dest) bad('exec mount has no destination');
        if (!inRange(num(m.input))) bad(`exec mount ${m.dest} reads input ${num(m.input)} of ${n}`);
      }
      break;
    }
    case 'source':
      if (!op.source!.identifier) bad('source op has no identifier');
      if (n !== 0) bad('source op must have no inputs');
      break;
    case 'file': {
      const actions = op.file!.actions ?? [];
      if (actions.length === 0) bad('file op has no actions');
      actions.forEach((a, i) => {
        if (!a.copy && !a.mkfile && !a.mkdir && !a.rm && !a.symlink)
          bad(`file action ${i} has no known kind`);
        if (!inRange(num(a.input), i)) bad(`file action ${i} reads input ${num(a.input)}`);
        if (!inRange(num(a.secondaryInput), i))
          bad(`file action ${i} reads secondary input ${num(a.secondaryInput)}`);
      });
      break;
    }
    case 'merge': {
      const ins = op.merge!.inputs ?? [];
      if (ins.length === 0) bad('merge op has no inputs');
      for (const m of ins)
        if (!(num(m.input) >= 0 && num(m.input) < n)) bad(`merge reads input ${num(m.input)}`);
      break;
    }
    case 'diff': {
      const d = op.diff!;
      for (const side of [d.lower, d.upper])
        if (side && !inRange(num(side.input))) bad(`diff reads input ${num(side.input)}`);
      break;
    }
    case 'build':
      if (n === 0) bad('build op has no inputs');
      break;
  }
}

/** Vertices reachable from `root`, inputs first; throws LLB_CYCLE on a cycle. Iterative. */
function topoFrom(root: string, ops: ReadonlyMap<string, LoadedOp>): string[] {
  const order: string[] = [];
  const state = new Map<string, 1 | 2>(); // 1: on the stack, 2: done
  const stack: { d: string; i: number }[] = [{ d: root, i: 0 }];
  state.set(root, 1);
  while (stack.length > 0) {
    const top = stack[stack.length - 1]!;
    const inputs = ops.get(top.d)!.op.inputs ?? [];
    if (top.i < inputs.length) {
      const next = inputs[top.i++]!.digest!;
      const s = state.get(next);
      if (s === 1)
        throw new InvalidDefinitionError('LLB_CYCLE', `cycle through ${next}`, { digest: top.d });
      if (s === undefined) {
        state.set(next, 1);
        stack.push({ d: next, i: 0 });
      }
      continue;
    }
    stack.pop();
    state.set(top.d, 2);
    order.push(top.d);
  }
  return order;
}

/** @internal exported for tests of graphs that cannot exist as real bytes (cycles). */
export const _topoFrom = topoFrom;
