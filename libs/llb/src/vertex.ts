import { createHash, randomBytes } from 'node:crypto';
import { pb } from '@kiln/protocol';
import { Caps } from './constants.js';
import { InvalidDefinitionError } from './errors.js';
import { LinuxAmd64, hostPlatform, normalizePlatform } from '@kiln/protocol';
import type { Platform } from '@kiln/protocol';

/** Per-vertex metadata that does not change the vertex digest (BuildKit's OpMetadata). */
export interface OpMeta {
  ignoreCache?: boolean;
  description?: Readonly<Record<string, string>>;
  exportCache?: boolean;
  caps?: Readonly<Record<string, true>>;
  progressGroup?: { id: string; name: string; weak?: boolean };
}

/** Constraints on an op: where it may run and its metadata (BuildKit's llb.Constraints). */
export interface Constraints {
  readonly platform?: Platform;
  readonly workerConstraints?: readonly string[];
  readonly metadata?: OpMeta;
  readonly localUniqueId?: string;
}

/** Options accepted by every op and by marshal: the BuildKit ConstraintsOpts. */
export interface ConstraintsOptions {
  platform?: Platform;
  customName?: string;
  ignoreCache?: boolean;
  description?: Record<string, string>;
  workerConstraints?: string[];
  progressGroup?: { id: string; name: string; weak?: boolean };
  exportCache?: boolean;
  localUniqueId?: string;
}

export function mergeMetadata(a: OpMeta | undefined, b: OpMeta | undefined): OpMeta {
  const out: OpMeta = { ...(a ?? {}) };
  if (!b) return out;
  if (b.ignoreCache) out.ignoreCache = true;
  if (b.description && Object.keys(b.description).length > 0) {
    out.description = { ...(out.description ?? {}), ...b.description };
  }
  if (b.exportCache !== undefined) out.exportCache = b.exportCache;
  if (b.caps && Object.keys(b.caps).length > 0) out.caps = { ...(out.caps ?? {}), ...b.caps };
  if (b.progressGroup) out.progressGroup = b.progressGroup;
  return out;
}

/** Builds constraints from options, on top of `base`. */
export function constraintsFrom(
  opts: ConstraintsOptions | undefined,
  base: Constraints = {},
): Constraints {
  if (!opts) return base;
  const md: OpMeta = {};
  if (opts.ignoreCache) md.ignoreCache = true;
  const desc: Record<string, string> = { ...(opts.description ?? {}) };
  if (opts.customName !== undefined) desc['llb.customname'] = opts.customName;
  if (Object.keys(desc).length > 0) md.description = desc;
  if (opts.exportCache !== undefined) md.exportCache = opts.exportCache;
  if (opts.progressGroup) md.progressGroup = opts.progressGroup;
  const out: { -readonly [K in keyof Constraints]: Constraints[K] } = {
    ...base,
    metadata: mergeMetadata(base.metadata, md),
  };
  if (opts.platform) out.platform = normalizePlatform(opts.platform);
  if (opts.workerConstraints?.length)
    out.workerConstraints = [...(base.workerConstraints ?? []), ...opts.workerConstraints];
  if (opts.localUniqueId !== undefined) out.localUniqueId = opts.localUniqueId;
  return out;
}

export function addCaps(c: Constraints, ...caps: string[]): Constraints {
  const all: Record<string, true> = { ...(c.metadata?.caps ?? {}) };
  for (const cap of caps) all[cap] = true;
  return { ...c, metadata: { ...(c.metadata ?? {}), caps: all } };
}

/** The op fields every op gets from its constraints, and its metadata (MarshalConstraints). */
export function marshalConstraints(
  base: Constraints,
  override: Constraints,
): { op: pb.IOp; metadata: OpMeta } {
  const platform = override.platform ?? base.platform ?? defaultPlatform();
  const filters = [...(base.workerConstraints ?? []), ...(override.workerConstraints ?? [])];
  const p: pb.IPlatform = {};
  if (platform.architecture) p.Architecture = platform.architecture;
  if (platform.os) p.OS = platform.os;
  if (platform.variant) p.Variant = platform.variant;
  if (platform.osVersion) p.OSVersion = platform.osVersion;
  if (platform.osFeatures?.length) p.OSFeatures = [...platform.osFeatures];
  const constraints: pb.IWorkerConstraints = {};
  if (filters.length > 0) constraints.filter = filters;
  return {
    op: { platform: p, constraints },
    metadata: mergeMetadata(base.metadata, override.metadata),
  };
}

function defaultPlatform(): Platform {
  const h = hostPlatform();
  return h.os === 'linux' ? h : LinuxAmd64;
}

export function toPbMetadata(m: OpMeta): pb.IOpMetadata {
  const out: pb.IOpMetadata = {};
  if (m.ignoreCache) out.ignoreCache = true;
  if (m.description && Object.keys(m.description).length > 0)
    out.description = { ...m.description };
  if (m.exportCache !== undefined) out.exportCache = m.exportCache ? { Value: true } : {};
  if (m.caps && Object.keys(m.caps).length > 0) out.caps = { ...m.caps };
  if (m.progressGroup) {
    const g: pb.IProgressGroup = {};
    if (m.progressGroup.id) g.id = m.progressGroup.id;
    if (m.progressGroup.name) g.name = m.progressGroup.name;
    if (m.progressGroup.weak) g.weak = true;
    out.progressGroup = g;
  }
  return out;
}

export function sha256Digest(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** A random id in BuildKit's identity.NewID format (25 base-36 characters). */
export function newId(): string {
  const b = randomBytes(17);
  b[0] = b[0]! | 0x80;
  return BigInt(`0x${b.toString('hex')}`)
    .toString(36)
    .padStart(26, '0')
    .slice(1);
}

/** One marshaled vertex. */
export interface MarshaledVertex {
  readonly digest: string;
  readonly bytes: Uint8Array;
  readonly metadata: OpMeta;
}

/**
 * A vertex of the graph being built. `inputs()` lists the outputs it reads in BuildKit's traversal
 * order; `marshal` may assume every input vertex is already marshaled in `ctx`.
 */
export interface Vertex {
  inputs(): readonly Output[];
  marshal(ctx: MarshalContext): MarshaledVertex;
}

/** Holds the marshal-wide constraints and the results of vertices marshaled so far. */
export class MarshalContext {
  private readonly done = new Map<Vertex, MarshaledVertex>();

  constructor(readonly constraints: Constraints) {}

  get(v: Vertex): MarshaledVertex {
    let m = this.done.get(v);
    if (!m) {
      m = v.marshal(this);
      this.done.set(v, m);
    }
    return m;
  }

  has(v: Vertex): boolean {
    return this.done.has(v);
  }
}

/** One output of a vertex: what a State points at. */
export class Output {
  constructor(
    readonly vertex: Vertex,
    private readonly indexOf: number | (() => number) = 0,
  ) {}

  index(): number {
    return typeof this.indexOf === 'number' ? this.indexOf : this.indexOf();
  }

  toInput(ctx: MarshalContext): pb.IInput {
    const { digest } = ctx.get(this.vertex);
    const index = this.index();
    return index === 0 ? { digest } : { digest, index };
  }
}

export function inputsEqual(a: pb.IInput, b: pb.IInput): boolean {
  return a.digest === b.digest && Number(a.index ?? 0) === Number(b.index ?? 0);
}

/** Encodes an op and wraps it as a marshaled vertex. */
export function finishOp(op: pb.IOp, metadata: OpMeta): MarshaledVertex {
  const bytes = pb.Op.encode(op).finish();
  return { digest: sha256Digest(bytes), bytes, metadata };
}

export function buildError(message: string): InvalidDefinitionError {
  return new InvalidDefinitionError('LLB_BUILD', message);
}

export { Caps };
