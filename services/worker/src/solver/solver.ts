/**
 * The local solver: runs a whole LLB Definition on this worker, as BuildKit's solver does on one
 * daemon. It knows vertices, cache keys and results; op kinds plug in as {@link OpExecutor}s
 * (one per kind), so the distributed scheduler can later drive the same executors task by task.
 *
 * Concurrency: independent branches run concurrently (execs limited to `parallelism`); a vertex
 * shared by several readers runs once. The first failure cancels the rest and is reported as a
 * VertexError naming the vertex. Results are committed snapshots, recorded in the cache index by
 * cache key; a rerun of an unchanged graph is answered from the index for every vertex.
 */
import { cpus } from 'node:os';
import { SpanStatusCode } from '@opentelemetry/api';
import { Attr, SpanName, tracer } from '@kiln/common';
import type { pb } from '@kiln/protocol';
import {
  depSpecs,
  opCacheDigest,
  opKind,
  outputCacheKey,
  parseDefinition,
  sourceCacheKey,
  sourceOpDigest,
  vertexCacheKey,
} from '@kiln/llb';
import type { DepKey, DepSpec, LoadedDefinition, LoadedOp, OpKind } from '@kiln/llb';
import type { LocalSpec } from '../sources/local/local-source.js';
import type { CacheIndex } from './cache-index.js';
import { SolveCanceledError, VertexError } from './errors.js';
import { vertexName } from './names.js';
import type { ProgressEvent } from './progress.js';

/** What a build may ask of its client while it runs. */
export interface SessionProviders {
  /** Directories by local source name (`local://<name>`). */
  localDirs?: Readonly<Record<string, string>>;
  /**
   * A local source's directory fetched from a remote client (filtered by the spec's patterns);
   * wins over `localDirs`.
   */
  syncLocal?: (spec: LocalSpec) => Promise<string>;
  /**
   * A local source fetched from a remote client as a committed snapshot (shared, immutable: the
   * worker's kept copy of that context); wins over `syncLocal`.
   */
  localSnapshot?: (spec: LocalSpec) => Promise<string>;
  /** Secret values by id; undefined when the client has no such secret. */
  secrets?: (id: string) => Promise<Uint8Array | undefined>;
  /** Host path of an ssh agent socket by ssh id. */
  ssh?: (id: string) => Promise<string | undefined>;
}

/** Everything an executor gets for one vertex. */
export interface ExecutorContext {
  readonly digest: string;
  readonly op: pb.Op;
  readonly metadata: pb.IOpMetadata | undefined;
  /** The committed snapshot of each op input, in `op.inputs` order; undefined: empty. */
  readonly inputs: readonly (string | undefined)[];
  readonly session: SessionProviders;
  readonly signal: AbortSignal;
  /** Live output and status of the vertex. */
  log(stream: 1 | 2, data: Uint8Array): void;
}

/** Runs one kind of op. */
export interface OpExecutor {
  /**
   * Source ops only: resolves the source to a pin (image manifest digest, content checksum of a
   * local dir, git commit...) that keys its cache. May fetch metadata, not content.
   */
  pin?(ctx: ExecutorContext): Promise<string>;
  /** Runs the op; returns the committed snapshot of each output (undefined: empty). */
  exec(ctx: ExecutorContext): Promise<(string | undefined)[]>;
}

/** Reads a committed snapshot (or the empty tree) as a host directory for the duration of `fn`. */
export type SnapshotReader = <T>(
  snapshot: string | undefined,
  fn: (dir: string) => Promise<T>,
) => Promise<T>;

/** Checksums paths of a directory for a content-based dep (see cache/contenthash). */
export type DepChecksum = (dir: string, dep: DepSpec) => Promise<string>;

export interface SolverOptions {
  executors: Partial<Record<OpKind, OpExecutor>>;
  index: CacheIndex;
  read: SnapshotReader;
  checksum: DepChecksum;
  /** Does this committed snapshot still exist (cache records may outlive pruned snapshots)? */
  exists: (snapshot: string) => Promise<boolean>;
  /** How many execs run at once; default: the number of CPUs. */
  parallelism?: number;
  /**
   * Remembers content checksums of committed snapshots (immutable, so a checksum never changes);
   * without it they are recomputed every solve.
   */
  checksumMemo?: { get(k: string): string | undefined; set(k: string, v: string): Promise<void> };
}

export interface SolveOptions {
  session?: SessionProviders;
  onProgress?: (e: ProgressEvent) => void;
  signal?: AbortSignal;
  /** Ignore the cache for every vertex (still records results). */
  noCache?: boolean;
}

export interface SolveResult {
  /** The committed snapshot of the result; undefined: empty. */
  snapshot: string | undefined;
  /** Digest and output index of the result vertex. */
  digest: string;
  index: number;
  cacheKey: string;
  /** How many vertices ran and how many were answered from the cache. */
  stats: { executed: number; cached: number };
}

interface Resolved {
  key: string;
  outputs: (string | undefined)[];
}

class Semaphore {
  private queue: (() => void)[] = [];
  private active = 0;

  constructor(private readonly limit: number) {}

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((r) => this.queue.push(r));
    this.active++;
    try {
      return await fn();
    } finally {
      this.active--;
      this.queue.shift()?.();
    }
  }
}

const num = (v: number | { toNumber(): number } | null | undefined): number =>
  v == null ? 0 : typeof v === 'number' ? v : v.toNumber();

export class LocalSolver {
  private readonly slots: Semaphore;

  constructor(private readonly o: SolverOptions) {
    this.slots = new Semaphore(o.parallelism ?? Math.max(1, cpus().length));
  }

  async solve(
    definition: Uint8Array | LoadedDefinition,
    opts: SolveOptions = {},
  ): Promise<SolveResult> {
    const g = definition instanceof Uint8Array ? parseDefinition(definition) : definition;
    const abort = new AbortController();
    const onOuterAbort = (): void => abort.abort(new SolveCanceledError(opts.signal?.reason));
    if (opts.signal?.aborted) onOuterAbort();
    opts.signal?.addEventListener('abort', onOuterAbort, { once: true });
    const emit = opts.onProgress ?? ((): void => undefined);
    const session = opts.session ?? {};
    const stats = { executed: 0, cached: 0 };
    const memo = new Map<string, Promise<Resolved>>();

    const resolve = (digest: string): Promise<Resolved> => {
      let p = memo.get(digest);
      if (!p) {
        p = this.vertex(g.ops.get(digest)!, resolve, {
          emit,
          session,
          signal: abort.signal,
          noCache: opts.noCache ?? false,
          stats,
        });
        // A failure is reported once, by the first awaiter; siblings see the abort.
        p.catch((err: unknown) => {
          if (!abort.signal.aborted) abort.abort(err);
        });
        memo.set(digest, p);
      }
      return p;
    };

    try {
      const r = await resolve(g.result.digest);
      return {
        snapshot: r.outputs[g.result.index],
        digest: g.result.digest,
        index: g.result.index,
        cacheKey: outputCacheKey(r.key, g.result.index),
        stats,
      };
    } catch (err) {
      // Prefer the root cause (the first failure) over a sibling's cancellation.
      const reason: unknown = abort.signal.reason;
      throw reason instanceof VertexError || reason instanceof SolveCanceledError ? reason : err;
    } finally {
      opts.signal?.removeEventListener('abort', onOuterAbort);
      await Promise.allSettled(memo.values());
    }
  }

  private async vertex(
    v: LoadedOp,
    resolve: (d: string) => Promise<Resolved>,
    s: {
      emit: (e: ProgressEvent) => void;
      session: SessionProviders;
      signal: AbortSignal;
      noCache: boolean;
      stats: { executed: number; cached: number };
    },
  ): Promise<Resolved> {
    const inputs = v.op.inputs ?? [];
    const resolvedInputs = await Promise.all(inputs.map((i) => resolve(i.digest!)));
    const inputSnapshots = inputs.map((i, k) => resolvedInputs[k]!.outputs[num(i.index)]);
    const inputKeys = inputs.map((i, k) => outputCacheKey(resolvedInputs[k]!.key, num(i.index)));
    const name = vertexName(v.op, v.metadata);
    const kind = opKind(v.op)!;
    const executor = this.o.executors[kind];
    if (!executor)
      throw new VertexError(
        v.digest,
        name,
        new Error(`no executor for ${kind} ops on this worker`),
      );
    if (s.signal.aborted) throw s.signal.reason;
    const span = tracer().startSpan(SpanName.vertex, {
      attributes: { [Attr.vertexDigest]: v.digest, [Attr.vertexName]: name, [Attr.opKind]: kind },
    });
    const ctx: ExecutorContext = {
      digest: v.digest,
      op: v.op,
      metadata: v.metadata,
      inputs: inputSnapshots,
      session: s.session,
      signal: s.signal,
      log: (stream, data) =>
        s.emit({ type: 'vertex.log', digest: v.digest, stream, data, time: Date.now() }),
    };
    try {
      const key = await this.cacheKey(v, kind, executor, ctx, inputKeys);
      const ignore = s.noCache || Boolean(v.metadata?.ignoreCache);
      if (!ignore) {
        const hit = await this.lookup(key);
        if (hit) {
          span.setAttribute(Attr.cacheHit, true);
          span.end();
          s.stats.cached++;
          s.emit({ type: 'vertex.cached', digest: v.digest, name, time: Date.now() });
          return { key, outputs: hit };
        }
      }
      const started = Date.now();
      s.emit({ type: 'vertex.started', digest: v.digest, name, time: started });
      const outputs =
        kind === 'exec' ? await this.slots.run(() => executor.exec(ctx)) : await executor.exec(ctx);
      await this.o.index.set(
        key,
        outputs.map((o) => o ?? null),
      );
      s.stats.executed++;
      s.emit({
        type: 'vertex.completed',
        digest: v.digest,
        name,
        time: Date.now(),
        durationMs: Date.now() - started,
      });
      return { key, outputs };
    } catch (err) {
      if (s.signal.aborted && !(err instanceof VertexError)) {
        span.end();
        throw s.signal.reason;
      }
      const ve = err instanceof VertexError ? err : new VertexError(v.digest, name, err);
      span.recordException(ve);
      span.setStatus({ code: SpanStatusCode.ERROR, message: ve.message });
      span.end();
      s.emit({
        type: 'vertex.error',
        digest: v.digest,
        name,
        time: Date.now(),
        error: ve.message,
        code: ve.code,
      });
      throw ve;
    }
  }

  private async cacheKey(
    v: LoadedOp,
    kind: OpKind,
    ex: OpExecutor,
    ctx: ExecutorContext,
    inputKeys: string[],
  ): Promise<string> {
    if (kind === 'source') {
      if (!ex.pin) throw new Error('source executor cannot pin');
      return sourceCacheKey(sourceOpDigest(v.op), await ex.pin(ctx));
    }
    const specs = depSpecs(v.op);
    const deps: DepKey[] = await Promise.all(
      specs.map(async (spec, i) => {
        const dep: DepKey = { inputKey: inputKeys[i]!, selectors: spec.selectors };
        if (spec.contentBased) {
          const snap = ctx.inputs[i];
          const memoKey = snap === undefined ? undefined : `${snap} ${JSON.stringify(spec)}`;
          const known = memoKey === undefined ? undefined : this.o.checksumMemo?.get(memoKey);
          if (known !== undefined) dep.contentDigest = known;
          else {
            dep.contentDigest = await this.o.read(snap, (dir) => this.o.checksum(dir, spec));
            if (memoKey !== undefined) await this.o.checksumMemo?.set(memoKey, dep.contentDigest);
          }
        }
        return dep;
      }),
    );
    return vertexCacheKey(opCacheDigest(v.op), deps);
  }

  private async lookup(key: string): Promise<(string | undefined)[] | undefined> {
    const rec = this.o.index.get(key);
    if (!rec) return undefined;
    for (const s of rec.outputs) {
      if (s !== null && !(await this.o.exists(s))) {
        await this.o.index.delete(key);
        return undefined;
      }
    }
    return rec.outputs.map((s) => s ?? undefined);
  }
}
