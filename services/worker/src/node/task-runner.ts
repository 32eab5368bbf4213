/**
 * TaskRunner: runs one task of the distributed scheduler (one LLB vertex) on this worker with the
 * engine's op executors. It is the {@link RunTask} a {@link TaskConsumer} calls.
 *
 * Contract:
 * - Inputs: a result this worker holds (result id -> committed snapshot, persisted under the state
 *   dir) is used as is; any other is rebuilt from its layers, fetched from the shared content store
 *   by digest and checked against their diffIDs, each layer a committed snapshot named by its
 *   chain ID (reused when present, built once when several tasks need it at once).
 * - Outputs: each output's layers (its snapshot chain, one layer per snapshot) are named by their
 *   diffIDs (computed once by the engine's LayerCache); blobs are made only when something needs
 *   them (`materializeResult`). Its result id is the chain ID of those layers (see
 *   `result-id.ts`), and it is held from then on (recorded on disk in the background).
 * - Failures are returned as a TaskError (code, retryable, exit code and output tail of a failed
 *   process), never thrown. When `signal` aborts the executors stop and the outcome is discarded by
 *   the consumer.
 * - Secrets, ssh agents and local directories come from the client's session (the task's
 *   `session_id`) through the scheduler that holds it (`session-relay.ts`). A task without a
 *   session can read only `local://` sources named in the configured directory map; other such
 *   ops fail with SESSION_UNAVAILABLE.
 * - An export task (`task.export`) runs no op: its inputs (one per platform) are assembled into
 *   the exporter's artifact (a tar of the files, an OCI or Docker tarball), which is put in the
 *   store and returned as the single layer of the single output (result id = its digest).
 */
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, rm, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform, pipeline } from 'node:stream';
import { TextDecoder } from 'node:util';
import type { Readable } from 'node:stream';
import {
  MaterializeResultUnknownError,
  openCacheMountsBucket,
  decodeMaterializeReply,
  encodeMaterializeJson,
  materializeSubject,
  taskKey,
} from '@kiln/bus';
import type { MaterializeReply, MaterializedLayer, Task, TaskErrorInit } from '@kiln/bus';
import { opKind } from '@kiln/llb';
import type { OpKind } from '@kiln/llb';
import {
  KilnError,
  asKilnError,
  indexAnnotations,
  manifestAnnotations,
  pb,
  platformFromPb,
  toLong,
} from '@kiln/protocol';
import type { Platform } from '@kiln/protocol';
import { DigestMismatchError } from '@kiln/store';
import type { BlobStore, Digest } from '@kiln/store';
import type { NatsConnection } from '@nats-io/transport-node';
import type { Logger } from 'pino';
import { Engine } from '../engine/engine.js';
import type { ImageResult } from '../engine/engine.js';
import { FileExecutor } from '../engine/executors/file.js';
import { SourceExecutor } from '../engine/executors/source.js';
import { applyLayer } from '@kiln/layers';
import type { TarLimits } from '@kiln/layers';
import { CacheMounts, FarmCacheMounts, runExec, sweepExecState } from '../ops/exec/index.js';
import type { CacheMountProvider } from '../ops/exec/index.js';
import { DiffExecutor, MergeExecutor } from '../ops/merge-diff/merge-diff.js';
import { buildSnapshot, snapshotChain, unpackOpts } from '../ops/snapshots.js';
import type { SnapshotEnv } from '../ops/snapshots.js';
import type { RegistryClientOptions } from '@kiln/registry';
import { LimitExceededError, OciRuntime } from '../runtime/index.js';
import type { RuntimeName, TaskLimits } from '../runtime/index.js';
import type { ExecutorContext, OpExecutor, SessionProviders } from '../ops/executor.js';
import type { ProgressUpdate, RunTask, TaskOutcome } from '@kiln/bus';
import {
  InputLostError,
  InputUnavailableError,
  InvalidTaskError,
  SessionUnavailableError,
} from './errors.js';
import { HeldResults } from './held-results.js';
import { UsageLog } from '../gc/usage-log.js';
import type { SnapshotLease } from '../snapshot/index.js';
import { unmountUnder } from '../snapshot/index.js';
import { LocalContexts } from '../sources/local/local-contexts.js';
import { SessionRelay } from './session-relay.js';
import type { TaskSession } from './session-relay.js';
import { EMPTY_RESULT_ID, chainIds, layerSnapshotName, resultIdOf } from './result-id.js';

type ResolvedInput = Task['inputs'][number];
type LayerRef = NonNullable<ResolvedInput['layers']>[number];
type OutputResult = NonNullable<TaskOutcome['outputs']>[number];
type ChainStepResult = NonNullable<TaskOutcome['chain']>[number];

export interface TaskRunnerOptions {
  /** The worker's own state (snapshots, runtime, layer cache, held results). */
  stateDir: string;
  /** The content store the whole farm shares: inputs are fetched from it, outputs go to it. */
  store: BlobStore;
  /** Directories served to `local://<name>` sources (tests, the embedded farm). */
  localDirs?: Readonly<Record<string, string>>;
  snapshotter?: 'auto' | 'overlayfs' | 'native';
  runtime?: RuntimeName | 'auto';
  /** Limits of every exec's container; exceeding one fails the task naming the limit and vertex. */
  limits?: TaskLimits;
  /**
   * Bounds on what one archive ADD unpacks, or one layer applied here, may unpack to; beyond,
   * the task fails (FILEOP_UNPACK_LIMIT_EXCEEDED, LAYER_LIMIT_EXCEEDED) and its partial snapshot
   * is removed. None when absent.
   */
  unpack?: TarLimits;
  /** Addresses a RUN in the sandbox network may not reach (the farm's control plane). */
  sandboxDeny?: string[];
  /** Where task cgroups are made (`OciRuntimeOptions.cgroupRoot`). */
  cgroupRoot?: string;
  registry?: RegistryClientOptions;
  /** The bus connection, to reach build sessions; without it tasks have no session. */
  nc?: NatsConnection;
  /** This worker's id (its session channels are asked for under it); needed with `nc`. */
  workerId?: string;
  /** Default: silent. */
  logger?: Logger;
  /**
   * How long the holder of an input may take to make its blobs (compress and upload them).
   * Default 120 s.
   */
  materializeTimeoutMs?: number;
  /**
   * Cache mounts shared across the farm (with `nc` and `workerId`): how long a reader waits for
   * another worker's upload (default 60 s) and a farm lock's lease (default 30 s).
   */
  cacheMountPendingWaitMs?: number;
  cacheMountLeaseMs?: number;
}

/** Counters since the runner opened. */
export interface RunnerStats {
  tasks: number;
  failed: number;
  /** Inputs found held locally / rebuilt from the store. */
  inputsLocal: number;
  inputsFetched: number;
  /** Layer blobs fetched from the store and their (compressed) bytes. */
  layersFetched: number;
  bytesFetched: number;
}

/** Where one task's inputs came from. */
interface InputStats {
  local: number;
  fetched: number;
  bytesFetched: number;
}

const num = (v: number | { toNumber(): number } | null | undefined): number =>
  v == null ? 0 : typeof v === 'number' ? v : v.toNumber();

/** A task's tenant limits (`Task.limits`, 0 fields are none) as the runtime's. */
function tenantLimits(l: NonNullable<Task['limits']>): TaskLimits {
  return {
    memoryBytes: num(l.memoryBytes),
    pids: num(l.pids),
    cpuShares: num(l.cpuShares),
    timeMs: num(l.timeMs),
  };
}

/** Lines of live output per progress message at most; longer bursts are split. */
const PROGRESS_LINES = 64;

export class TaskRunner {
  readonly #stats: RunnerStats = {
    tasks: 0,
    failed: 0,
    inputsLocal: 0,
    inputsFetched: 0,
    layersFetched: 0,
    bytesFetched: 0,
  };
  readonly #layerBuilds = new Map<string, Promise<string>>();
  readonly #executors: Partial<Record<OpKind, OpExecutor>>;
  readonly #noSession: SessionProviders;
  readonly #relay: SessionRelay | undefined;
  readonly #nc: NatsConnection | undefined;
  readonly #materializeTimeoutMs: number;
  /** Start times of the running tasks (what garbage collection keeps their new snapshots by). */
  readonly #running = new Map<symbol, number>();

  private constructor(
    readonly engine: Engine,
    readonly store: BlobStore,
    private readonly env: SnapshotEnv,
    /** Result id -> committed snapshot of the results held here (garbage collection prunes it). */
    readonly held: HeldResults,
    private readonly log: Logger | undefined,
    private readonly localDirs: Readonly<Record<string, string>>,
    nc: NatsConnection | undefined,
    /** Synced local contexts kept for the next sync of the same context (`local-contexts.ts`). */
    readonly contexts: LocalContexts,
    materializeTimeoutMs: number,
    /** When each snapshot was last used (what garbage collection orders by). */
    readonly usage: UsageLog,
    workerId: string | undefined,
    /** Where exec cache mounts come from (the farm's when on the bus). */
    readonly cacheMounts: CacheMountProvider,
    /** This worker's working copies of them (what its GC lists and collects). */
    readonly localCacheMounts: CacheMounts,
  ) {
    this.#nc = nc;
    this.#materializeTimeoutMs = materializeTimeoutMs;
    this.#executors = {
      source: new SourceExecutor(env, engine.images, store, engine.layers, (c) =>
        engine.imagesFor(c),
      ),
      exec: { exec: (ctx) => this.#exec(ctx) },
      file: new FileExecutor(env),
      merge: new MergeExecutor(env, { layers: engine.layers, store }),
      diff: new DiffExecutor(env, engine.layers, store),
    };
    this.#noSession = {
      localDirs,
      secrets: (id) => Promise.reject(new SessionUnavailableError('secret', id)),
      ssh: (id) => Promise.reject(new SessionUnavailableError('ssh', id)),
    };
    this.#relay =
      nc && workerId
        ? new SessionRelay({ nc, workerId, store, tmpDir: env.tmpDir, contexts })
        : undefined;
  }

  /**
   * Opens the engine on `stateDir` (sweeping what a dead process left: containers, exec mounts)
   * and the held results. One runner per state dir.
   */
  static async open(o: TaskRunnerOptions): Promise<TaskRunner> {
    // A predecessor killed mid-run left its containers running (holding their mounts): stopped
    // first, then the engine unmounts and removes the rest (tmp/, exec/, snapshot views).
    await OciRuntime.sweepLeftovers(join(o.stateDir, 'exec'));
    const engine = await Engine.open({
      stateDir: o.stateDir,
      store: o.store,
      ...(o.snapshotter ? { snapshotter: o.snapshotter } : {}),
      ...(o.runtime ? { runtime: o.runtime } : {}),
      ...(o.registry ? { registry: o.registry } : {}),
      ...(o.limits ? { limits: o.limits } : {}),
      ...(o.sandboxDeny ? { sandboxDeny: o.sandboxDeny } : {}),
      ...(o.cgroupRoot ? { cgroupRoot: o.cgroupRoot } : {}),
    });
    await sweepExecState(join(o.stateDir, 'exec'));
    const held = await HeldResults.open(join(o.stateDir, 'node', 'held-results.jsonl'));
    const usage = await UsageLog.open(join(o.stateDir, 'node', 'usage.jsonl'));
    const env: SnapshotEnv = {
      snapshotter: engine.snapshotter,
      tmpDir: join(o.stateDir, 'tmp'),
      ...(o.unpack ? { unpack: o.unpack } : {}),
    };
    const contexts = await LocalContexts.open({
      stateDir: join(o.stateDir, 'node'),
      env,
      store: o.store,
    });
    const localCaches = new CacheMounts(join(o.stateDir, 'exec', 'cache-mounts'));
    const nc = o.nc;
    const cacheMounts =
      nc && o.workerId
        ? new FarmCacheMounts({
            bucket: () => openCacheMountsBucket(nc),
            store: o.store,
            local: localCaches,
            workerId: o.workerId,
            ...(o.cacheMountPendingWaitMs !== undefined
              ? { pendingWaitMs: o.cacheMountPendingWaitMs }
              : {}),
            ...(o.cacheMountLeaseMs !== undefined ? { leaseMs: o.cacheMountLeaseMs } : {}),
            ...(o.logger ? { logger: o.logger.child({ component: 'cache-mounts' }) } : {}),
          })
        : localCaches;
    return new TaskRunner(
      engine,
      o.store,
      env,
      held,
      o.logger,
      o.localDirs ?? {},
      o.nc,
      contexts,
      o.materializeTimeoutMs ?? 120_000,
      usage,
      o.workerId,
      cacheMounts,
      localCaches,
    );
  }

  /**
   * Ends the runner's use of the machine, once no task runs: the blobs it makes ahead in the
   * background are finished, and whatever is still mounted under its exec and temp dirs (a
   * view some path failed to release: logged) is unmounted, so nothing stays mounted after the
   * process. Answers how many such mounts there were.
   */
  async close(): Promise<number> {
    await this.engine.layers.settled();
    let left = 0;
    for (const dir of [join(this.engine.stateDir, 'exec', 'exec'), this.env.tmpDir]) {
      const n = await unmountUnder(dir);
      if (n > 0) this.log?.warn({ dir, mounts: n }, 'mounts left at close: unmounted');
      left += n;
    }
    return left;
  }

  /** The {@link RunTask} for a TaskConsumer. */
  readonly run: RunTask = (task, signal, progress) => this.#run(task, signal, progress);

  /** Result ids held here, oldest first (the registration advertises the newest). */
  heldResults(): string[] {
    return this.held.ids();
  }

  /** The committed snapshot of a held result. */
  snapshotOf(resultId: string): string | undefined {
    return this.held.get(resultId);
  }

  /** When the oldest running task started (ms since the epoch); undefined when none runs. */
  runningSince(): number | undefined {
    let oldest: number | undefined;
    for (const t of this.#running.values()) if (oldest === undefined || t < oldest) oldest = t;
    return oldest;
  }

  get stats(): Readonly<RunnerStats> {
    return { ...this.#stats };
  }

  /** Free bytes on the state dir's filesystem (0 when unknown). */
  async freeDiskBytes(): Promise<number> {
    try {
      const s = await statfs(this.engine.stateDir);
      return s.bavail * s.bsize;
    } catch (err) {
      this.log?.warn({ err }, 'statfs failed');
      return 0;
    }
  }

  async #run(
    task: Task,
    signal: AbortSignal,
    progress: (p: ProgressUpdate) => void,
  ): Promise<TaskOutcome> {
    const log = this.log?.child({
      buildId: task.buildId,
      vertexDigest: task.vertexDigest,
      taskId: task.taskId,
      attempt: task.attempt,
    });
    this.#stats.tasks++;
    const io: InputStats = { local: 0, fetched: 0, bytesFetched: 0 };
    const output = new OutputLines(progress);
    let session: TaskSession | undefined;
    // Leases on the inputs' snapshots, held until the task ends: garbage collection cannot
    // remove what a running task reads.
    const leases: SnapshotLease[] = [];
    const running = Symbol(task.taskId);
    // A millisecond early: snapshot times are ISO strings of the same clock, never earlier.
    this.#running.set(running, Date.now() - 1);
    try {
      if (task.sessionId && this.#relay)
        session = this.#relay.open(task.sessionId, {
          key: taskKey(task.cacheKey),
          token: task.attemptToken,
        });
      if (task.export)
        return await this.#runExport(task, task.export, signal, io, leases, progress, log, session);
      const op = decodeOp(task.op);
      const kind = opKind(op);
      const executor = kind ? this.#executors[kind] : undefined;
      if (!kind || !executor)
        throw new InvalidTaskError(`no executor for ${kind ?? 'unknown'} ops`);
      const opInputs = op.inputs ?? [];
      const taskInputs = task.inputs ?? [];
      if (taskInputs.length !== opInputs.length) {
        throw new InvalidTaskError(
          `the op has ${opInputs.length} inputs, the task resolves ${taskInputs.length}`,
        );
      }
      if (!session) this.#checkSession(op);
      log?.debug({ kind, inputs: taskInputs.length }, 'task started');
      progress({ stage: 'inputs', current: 0, total: taskInputs.length });
      const t0 = performance.now();
      const inputs = await Promise.all(
        taskInputs.map((inp, i) => this.#materialize(inp, i, signal, io, leases, log)),
      );
      signal.throwIfAborted();
      progress({ stage: 'run' });
      const t1 = performance.now();
      const ctx: ExecutorContext = {
        digest: task.vertexDigest,
        op,
        metadata: task.metadata ?? undefined,
        inputs,
        session: session?.providers ?? this.#noSession,
        cacheNamespace: task.cacheNamespace ?? '',
        ...(task.limits ? { tenantLimits: tenantLimits(task.limits) } : {}),
        signal,
        log: (stream, data) => output.write(stream, data),
      };
      const snapshots = await executor.exec(ctx);
      output.flush();
      signal.throwIfAborted();
      progress({ stage: 'upload', current: 0, total: snapshots.length });
      const t2 = performance.now();
      // A fused chain's first step runs while this op's diffIDs are computed (it needs only the
      // committed snapshot).
      // Blobs made ahead of need wait for the end of a chain: they would compete with its
      // steps for the disk and the thread pool.
      const ahead = task.chain?.length ? [] : undefined;
      const made = this.#outputs(snapshots, ahead);
      made.catch(() => undefined); // awaited below
      const chain = ahead
        ? await this.#runChain(task, snapshots, {
            signal,
            io,
            leases,
            session,
            progress,
            log,
            ahead,
          })
        : undefined;
      const outputs = await made;
      for (const s of new Set(ahead))
        void this.engine.layers.compressAhead(this.env, this.store, s);
      const ms = (a: number, b: number): number => Math.round(b - a);
      log?.info(
        {
          kind,
          outputs: outputs.map((o) => o.resultId),
          inputsLocal: io.local,
          inputsFetched: io.fetched,
          bytesFetched: io.bytesFetched,
          // Where the task's time went: inputs made ready, the op, its outputs' diffIDs (and
          // the fused steps after it).
          inputsMs: ms(t0, t1),
          runMs: ms(t1, t2),
          outputsMs: ms(t2, performance.now()),
          ...(chain ? { chain: chain.length } : {}),
        },
        'task done',
      );
      return { outputs, inputs: io, ...(chain ? { chain } : {}) };
    } catch (err) {
      output.flush();
      this.#stats.failed++;
      const error = taskErrorOf(err);
      if (signal.aborted) log?.info({ code: error.code }, 'task aborted');
      else log?.warn({ err, code: error.code, exitCode: error.exitCode }, 'task failed');
      return { error, inputs: io };
    } finally {
      for (const l of leases) l.release();
      this.#running.delete(running);
      await session?.close();
    }
  }

  /** The results of an op's output snapshots (sparse: a hole is an empty output). */
  async #outputs(
    snapshots: readonly (string | undefined)[],
    ahead?: string[],
  ): Promise<OutputResult[]> {
    const outputs: OutputResult[] = [];
    for (let i = 0; i < snapshots.length; i++)
      outputs.push(await this.#output(snapshots[i], ahead));
    return outputs;
  }

  /**
   * The fused steps of a task (`Task.chain`), in order, each on the previous one's output (the
   * task's op's for the first), after the task's op succeeded. A step that fails ends the chain
   * with its own error; the steps before it keep their results. Each step's outputs are made as
   * if it had run as a task of its own (its own snapshot and layer, its result id held here);
   * their diffIDs are computed while the next step runs. Throws only when `signal` aborted.
   */
  async #runChain(
    task: Task,
    head: readonly (string | undefined)[],
    c: {
      signal: AbortSignal;
      io: InputStats;
      leases: SnapshotLease[];
      session: TaskSession | undefined;
      progress: (p: ProgressUpdate) => void;
      log: Logger | undefined;
      ahead: string[];
    },
  ): Promise<ChainStepResult[]> {
    const results: ChainStepResult[] = [];
    const made: Promise<void>[] = [];
    const nanos = (): ReturnType<typeof toLong> => toLong(BigInt(Date.now()) * 1_000_000n);
    let prev = head;
    for (const [k, step] of (task.chain ?? []).entries()) {
      const r: ChainStepResult = {
        vertexDigest: step.vertexDigest ?? '',
        startedUnixNano: nanos(),
      };
      results.push(r);
      const t0 = performance.now();
      // A RUN's output goes to its own vertex.
      const output = new OutputLines((p) => c.progress({ ...p, vertex: step.vertexDigest ?? '' }));
      try {
        const op = decodeOp(step.op);
        const kind = opKind(op);
        const executor = kind ? this.#executors[kind] : undefined;
        if (!kind || !executor || kind === 'source')
          throw new InvalidTaskError(`no executor for fused ${kind ?? 'unknown'} ops`);
        const opInputs = op.inputs ?? [];
        const stepInputs = step.inputs ?? [];
        const chained = step.chainedInput ?? 0;
        if (stepInputs.length !== opInputs.length || chained >= opInputs.length)
          throw new InvalidTaskError(
            `fused step ${k}: the op has ${opInputs.length} inputs, the step resolves ` +
              `${stepInputs.length} and chains input ${chained}`,
          );
        const from = num(opInputs[chained]?.index);
        const inputs = await Promise.all(
          stepInputs.map((inp, i) =>
            i === chained
              ? Promise.resolve(prev[from])
              : this.#materialize(inp, i, c.signal, c.io, c.leases, c.log),
          ),
        );
        c.signal.throwIfAborted();
        const snapshots = await executor.exec({
          digest: step.vertexDigest ?? '',
          op,
          metadata: step.metadata ?? undefined,
          inputs,
          session: c.session?.providers ?? this.#noSession,
          cacheNamespace: task.cacheNamespace ?? '',
          ...(task.limits ? { tenantLimits: tenantLimits(task.limits) } : {}),
          signal: c.signal,
          log: (stream, data) => output.write(stream, data),
        });
        output.flush();
        c.signal.throwIfAborted();
        const t1 = performance.now();
        const outputs = this.#outputs(snapshots, c.ahead).then(
          (outs) => {
            r.outputs = outs;
            r.completedUnixNano = nanos();
            c.log?.debug(
              {
                kind,
                step: k,
                stepVertex: step.vertexDigest,
                outputs: outs.map((o) => o.resultId),
                runMs: Math.round(t1 - t0),
                outputsMs: Math.round(performance.now() - t1),
              },
              'fused step done',
            );
          },
          (err: unknown) => {
            r.error = taskErrorOf(err);
            r.completedUnixNano = nanos();
          },
        );
        made.push(outputs);
        prev = snapshots;
      } catch (err) {
        output.flush();
        if (c.signal.aborted) throw err;
        r.error = taskErrorOf(err);
        r.completedUnixNano = nanos();
        c.log?.warn(
          { err, step: k, stepVertex: step.vertexDigest, code: r.error.code },
          'fused step failed',
        );
        break;
      }
    }
    await Promise.all(made);
    c.signal.throwIfAborted();
    // A step whose outputs could not be made failed: the steps after it had no valid input.
    const failed = results.findIndex((r) => r.error);
    return failed < 0 ? results : results.slice(0, failed + 1);
  }

  /** An export task: the artifact of `spec` over the inputs, put in the store. */
  async #runExport(
    task: Task,
    spec: NonNullable<Task['export']>,
    signal: AbortSignal,
    io: InputStats,
    leases: SnapshotLease[],
    progress: (p: ProgressUpdate) => void,
    log: Logger | undefined,
    session: TaskSession | undefined,
  ): Promise<TaskOutcome> {
    const taskInputs = task.inputs ?? [];
    const platforms = spec.platforms ?? [];
    if (taskInputs.length === 0 || taskInputs.length !== platforms.length)
      throw new InvalidTaskError(
        `an export needs one input per platform (${taskInputs.length} inputs, ${platforms.length} platforms)`,
      );
    const type = spec.type ?? '';
    if (!['local', 'tar', 'oci', 'docker', 'image'].includes(type))
      throw new InvalidTaskError(`unknown exporter type ${JSON.stringify(type)}`);
    if (platforms.length > 1 && type !== 'oci' && type !== 'image')
      throw new InvalidTaskError(`a ${type} export takes one platform`);
    progress({ stage: 'inputs', current: 0, total: taskInputs.length });
    const snapshots = await Promise.all(
      taskInputs.map((inp, i) => this.#materialize(inp, i, signal, io, leases, log)),
    );
    signal.throwIfAborted();
    progress({ stage: 'export' });
    const configOf = (i: number): Record<string, unknown> =>
      JSON.parse(platforms[i]?.configJson || '{}') as Record<string, unknown>;
    const platformOf = (p: (typeof platforms)[number]): Platform =>
      platformFromPb(p.platform) ?? { os: '', architecture: '' };
    const annotations = spec.annotations ?? {};
    const hasIndex = platforms.length > 1 && (type === 'oci' || type === 'image');
    const indexAnn = indexAnnotations(annotations, hasIndex);
    const imageOf = (p: (typeof platforms)[number], i: number): ImageResult => ({
      snapshot: snapshots[i],
      config: configOf(i),
      platform: platformOf(p),
      annotations: manifestAnnotations(annotations, platformFromPb(p.platform)),
      predicates: (p.attestations ?? []).map((a) => ({
        predicateType: a.predicateType ?? '',
        predicate: Buffer.from(a.predicate ?? new Uint8Array(0)),
      })),
    });
    const epoch = spec.sourceDateEpoch ? Number(spec.sourceDateEpoch) : undefined;
    if (epoch !== undefined && !(Number.isSafeInteger(epoch) && epoch >= 0))
      throw new InvalidTaskError(
        `invalid source date epoch ${JSON.stringify(spec.sourceDateEpoch)}`,
      );
    const imageOpts = {
      ...(spec.sbom ? { sbom: true } : {}),
      ...(epoch !== undefined ? { sourceDateEpoch: epoch } : {}),
    };
    if (type === 'image') {
      // Pushed to the registry: the result is what the names now point at.
      const pushed = await this.engine.pushImages(
        platforms.map(imageOf),
        spec.names ?? [],
        // As the build's client (its session's registry credentials), never as this worker
        // unless the farm lends its own.
        session?.providers.credentials,
        indexAnn,
        imageOpts,
      );
      log?.info({ type, digest: pushed.digest, names: pushed.names }, 'export done');
      return { outputs: [{ resultId: pushed.digest, layers: [] }], inputs: io };
    }
    await mkdir(this.env.tmpDir, { recursive: true });
    const dir = await mkdtemp(join(this.env.tmpDir, 'export-'));
    try {
      const file = join(dir, 'artifact');
      const names = spec.names ?? [];
      if (type === 'oci' || type === 'docker') {
        await this.engine.exportImages(platforms.map(imageOf), {
          type,
          dest: file,
          names,
          indexAnnotations: indexAnn,
          ...imageOpts,
        });
      } else {
        await this.engine.export(snapshots[0], { type: 'tar', dest: file });
      }
      signal.throwIfAborted();
      progress({ stage: 'upload', current: 0, total: 1 });
      const { digest, size } = await this.store.put(undefined, createReadStream(file), {
        mediaType: exportMediaType(type),
      });
      log?.info({ type, digest, size }, 'export done');
      return {
        outputs: [
          {
            resultId: digest,
            layers: [{ digest, diffId: digest, size, mediaType: exportMediaType(type) }],
          },
        ],
        inputs: io,
      };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /**
   * ExecOp: `runExec` with this runner's session providers, output streamed as progress. (Not the
   * engine's ExecExecutor: its construction is the engine's business and is changing.)
   */
  async #exec(ctx: ExecutorContext): Promise<(string | undefined)[]> {
    const res = await this.#runExec(ctx).catch((err: unknown) => {
      if (!(err instanceof LimitExceededError)) throw err;
      const name = ctx.metadata?.description?.['llb.customname'];
      throw err.forVertex(ctx.digest, name);
    });
    const outputs: (string | undefined)[] = [];
    for (const [i, name] of res.outputs) outputs[i] = name;
    return outputs;
  }

  async #runExec(ctx: ExecutorContext): ReturnType<typeof runExec> {
    return runExec(
      {
        snapshotter: this.engine.snapshotter,
        runtime: await this.#runtime(),
        stateDir: join(this.engine.stateDir, 'exec'),
        cacheMounts: this.cacheMounts,
        ...(ctx.session.secrets ? { secrets: ctx.session.secrets } : {}),
        ...(ctx.session.ssh ? { ssh: ctx.session.ssh } : {}),
      },
      {
        op: ctx.op.exec!,
        inputs: ctx.inputs,
        cacheNamespace: ctx.cacheNamespace ?? '',
        ...(ctx.tenantLimits ? { tenantLimits: ctx.tenantLimits } : {}),
        signal: ctx.signal,
        onOutput: (stream, data) => ctx.log(stream === 'stderr' ? 2 : 1, data),
      },
    );
  }

  /** Whether the OCI runtime opens (found and usable): a readiness check. */
  async runtimeUsable(): Promise<boolean> {
    try {
      await this.#runtime();
      return true;
    } catch {
      return false;
    }
  }

  /** The engine's OCI runtime: an instance, or (newer engines) opened on first use. */
  #runtime(): Promise<OciRuntime> {
    const r = this.engine.runtime as unknown as OciRuntime | (() => Promise<OciRuntime>);
    return typeof r === 'function' ? r() : Promise.resolve(r);
  }

  #checkSession(op: pb.IOp): void {
    const id = op.source?.identifier ?? '';
    if (!id.startsWith('local://')) return;
    const name = id.slice('local://'.length);
    if (this.localDirs[name] === undefined) throw new SessionUnavailableError('local', name);
  }

  // ---- inputs ----

  async #materialize(
    inp: ResolvedInput,
    index: number,
    signal: AbortSignal,
    io: InputStats,
    leases: SnapshotLease[],
    log: Logger | undefined,
  ): Promise<string | undefined> {
    const id = inp.resultId ?? '';
    if (id === EMPTY_RESULT_ID) return undefined;
    const local = id ? this.held.get(id) : undefined;
    if (local !== undefined) {
      // Looked up and leased in one step: either GC removed it already, or it cannot now.
      const lease = this.#lease(local);
      if (lease) {
        leases.push(lease);
        this.#stats.inputsLocal++;
        io.local++;
        return local;
      }
      await this.held.delete(id); // pruned: fetch it like any other
    }
    let layers = inp.layers ?? [];
    if (layers.length === 0) {
      throw new InputUnavailableError(index, id, 'not held by this worker and no layers to fetch');
    }
    if (await this.#needsHolder(layers)) layers = await this.#askHolder(inp, index, log);
    const computed = resultIdOf(layers.map((l) => l.diffId ?? ''));
    if (id && id !== computed) {
      throw new InvalidTaskError(
        `input ${index}: its layers make result ${computed}, not the ${id} it names`,
      );
    }
    const before = io.bytesFetched;
    const ids = chainIds(layers.map((l) => l.diffId ?? ''));
    let parent: string | undefined;
    for (const [k, layer] of layers.entries()) {
      signal.throwIfAborted();
      parent = await this.#layerSnapshot(layerSnapshotName(ids[k] ?? ''), parent, layer, {
        index,
        resultId: id,
        io,
      });
    }
    if (parent === undefined) throw new InputUnavailableError(index, id, 'no layers');
    const lease = this.#lease(parent);
    if (!lease) throw new InputUnavailableError(index, id, 'its snapshot was removed meanwhile');
    leases.push(lease);
    await this.held.set(computed, parent);
    this.#stats.inputsFetched++;
    io.fetched++;
    log?.debug({ index, resultId: computed, bytes: io.bytesFetched - before }, 'input fetched');
    return parent;
  }

  /** Whether some layer has no blob yet and is not here as a snapshot either. */
  async #needsHolder(layers: readonly LayerRef[]): Promise<boolean> {
    const ids = chainIds(layers.map((l) => l.diffId ?? ''));
    for (const [k, l] of layers.entries()) {
      if (!l.digest && !(await this.#exists(layerSnapshotName(ids[k] ?? '')))) return true;
    }
    return false;
  }

  /**
   * Asks the input's holder to make its layers blobs (`kiln.materialize.<holder>`). A holder that
   * is gone, does not answer in time or no longer has the result means the input is lost:
   * {@link InputLostError}, on which the scheduler reruns the vertex that made it.
   */
  async #askHolder(
    inp: ResolvedInput,
    index: number,
    log: Logger | undefined,
  ): Promise<LayerRef[]> {
    const id = inp.resultId ?? '';
    const holder = inp.holderWorker ?? '';
    if (!holder || !this.#nc) throw new InputLostError(index, id, holder, 'no holder to ask');
    let reply: MaterializeReply;
    try {
      const msg = await this.#nc.request(
        materializeSubject(holder),
        encodeMaterializeJson({ resultId: id }),
        { timeout: this.#materializeTimeoutMs },
      );
      reply = decodeMaterializeReply(msg.data);
    } catch (err) {
      throw new InputLostError(
        index,
        id,
        holder,
        `its holder did not answer: ${errText(err)}`,
        err,
      );
    }
    if ('error' in reply)
      throw new InputLostError(index, id, holder, `${reply.error.code}: ${reply.error.message}`);
    log?.debug({ index, resultId: id, holder }, 'input materialized by its holder');
    return reply.layers;
  }

  /** The committed snapshot of one layer on `parent`, built once per chain ID. */
  #layerSnapshot(
    name: string,
    parent: string | undefined,
    layer: LayerRef,
    by: { index: number; resultId: string; io: InputStats },
  ): Promise<string> {
    let p = this.#layerBuilds.get(name);
    if (!p) {
      p = (async () => {
        if (await this.#exists(name)) return name;
        const digest = (layer.digest ?? '') as Digest;
        const diffID = layer.diffId ?? '';
        try {
          await buildSnapshot(
            this.env,
            parent,
            async (dir) => {
              const applied = await applyLayer(
                await this.#fetch(digest, by.io),
                dir,
                unpackOpts(this.env),
              );
              if (applied.diffID !== diffID) throw new DigestMismatchError(diffID, applied.diffID);
            },
            name,
          );
        } catch (err) {
          // The image source builds the same names: it may have committed this one meanwhile.
          if (await this.#exists(name)) return name;
          if (err instanceof DigestMismatchError) throw err;
          throw new InputUnavailableError(
            by.index,
            by.resultId,
            `layer ${digest}: ${errText(err)}`,
            err,
          );
        }
        this.#stats.layersFetched++;
        // Later outputs built on this layer reuse its blob instead of re-diffing the snapshot
        // (the same bytes, so the same chain IDs on every worker).
        if (!this.engine.layers.get(name)) {
          await this.engine.layers.set(name, {
            digest,
            diffID,
            size: num(layer.size),
            mediaType: layer.mediaType ?? '',
          });
        }
        return name;
      })();
      p.finally(() => this.#layerBuilds.delete(name)).catch(() => undefined);
      this.#layerBuilds.set(name, p);
    }
    return p;
  }

  /**
   * A verified read of a blob, counting its bytes (for the task that started the fetch: a task
   * that waits for another's fetch of the same layer counts nothing).
   */
  async #fetch(digest: Digest, io: InputStats): Promise<Readable> {
    const src = await this.store.get(digest);
    const stats = this.#stats;
    const counter = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        stats.bytesFetched += chunk.length;
        io.bytesFetched += chunk.length;
        cb(null, chunk);
      },
    });
    // Errors (a digest mismatch at the end of the read) reach the reader through `counter`.
    pipeline(src, counter, () => undefined);
    return counter;
  }

  /** A lease on a snapshot that exists (marked used now), or undefined when it is gone. */
  #lease(snapshot: string): SnapshotLease | undefined {
    let lease: SnapshotLease;
    try {
      lease = this.engine.snapshotter.acquire(snapshot);
    } catch (err) {
      if (err instanceof KilnError && err.code === 'SNAPSHOT_NOT_FOUND') return undefined;
      throw err;
    }
    this.usage.touch(snapshot);
    return lease;
  }

  #exists(snapshot: string): Promise<boolean> {
    return this.engine.snapshotter.stat(snapshot).then(
      () => true,
      () => false,
    );
  }

  // ---- outputs ----

  /**
   * A task's output: held here as its snapshot, named by the chain of its layers' diffIDs. Only
   * the diffIDs are computed (nothing is compressed or uploaded); layers whose blob is already
   * known and in the store (a pulled image's, a fetched input's, one made earlier) carry it, the
   * others are made on request ({@link TaskRunner.materializeResult}).
   */
  async #output(snapshot: string | undefined, ahead?: string[]): Promise<OutputResult> {
    if (snapshot === undefined) return { resultId: EMPTY_RESULT_ID, layers: [] };
    const chain = await snapshotChain(this.env, snapshot);
    const diffIDs = await Promise.all(chain.map((s) => this.engine.layers.diffIdOf(this.env, s)));
    const layers: LayerRef[] = await Promise.all(
      chain.map(async (s, i) => {
        const rec = this.engine.layers.get(s);
        // A record may come from an earlier run against another store: only a blob the store
        // has is named (a result never names a blob the store lacks).
        if (rec && (await this.store.has(rec.digest as Digest)))
          return {
            digest: rec.digest,
            diffId: rec.diffID,
            size: rec.size,
            mediaType: rec.mediaType,
          };
        return { digest: '', diffId: diffIDs[i] ?? '', size: 0, mediaType: '' };
      }),
    );
    for (const [i, s] of chain.entries()) {
      if (layers[i]!.digest) continue;
      if (ahead) ahead.push(s);
      else void this.engine.layers.compressAhead(this.env, this.store, s);
    }
    const resultId = resultIdOf(diffIDs);
    // Held from now on (in memory at once); its line is appended off the task's critical path: a
    // worker that dies before it is written forgets the result, and whoever needs it then reruns
    // its producer, as after any lost holder.
    this.held
      .set(resultId, snapshot)
      .catch((err: unknown) => this.log?.warn({ err, resultId }, 'held result not recorded'));
    this.usage.touch(snapshot);
    return { resultId, layers };
  }

  /**
   * Makes every layer of a held result a blob in the store (blobs first) and returns their
   * descriptors, base first: what a `kiln.materialize.<id>` request is answered with, and what
   * write-behind does. Throws {@link MaterializeResultUnknownError} for a result not held here.
   * With `yieldTo`, layers are made one at a time and the work stops (undefined) before the next
   * one once `yieldTo()` is true (a task arrived); the layers made so far stay made.
   */
  async materializeResult(
    resultId: string,
    o: { yieldTo?: () => boolean } = {},
  ): Promise<MaterializedLayer[] | undefined> {
    if (resultId === EMPTY_RESULT_ID) return [];
    const snapshot = this.held.get(resultId);
    if (snapshot === undefined || !(await this.#exists(snapshot)))
      throw new MaterializeResultUnknownError(resultId);
    this.usage.touch(snapshot);
    const chain = await snapshotChain(this.env, snapshot);
    const one = async (s: string): Promise<MaterializedLayer> => {
      const rec = await this.engine.layers.layerOf(this.env, this.store, s);
      if (!(await this.store.has(rec.digest as Digest))) {
        throw new KilnError('TASK_OUTPUT_BLOB_MISSING', `layer ${rec.digest} is not in the store`, {
          retryable: true,
          details: { digest: rec.digest, snapshot: s },
        });
      }
      return { digest: rec.digest, diffId: rec.diffID, size: rec.size, mediaType: rec.mediaType };
    };
    let layers: MaterializedLayer[];
    if (o.yieldTo) {
      const yieldTo = o.yieldTo;
      layers = [];
      for (const s of chain) {
        if (yieldTo()) return undefined;
        layers.push(await one(s));
      }
    } else {
      layers = await Promise.all(chain.map(one));
    }
    const made = resultIdOf(layers.map((l) => l.diffId));
    if (made !== resultId)
      throw new KilnError('LAYER_NOT_REPRODUCIBLE', `result ${resultId} now makes ${made}`, {
        details: { resultId, made },
      });
    return layers;
  }
}

function exportMediaType(type: string): string {
  if (type === 'oci') return 'application/vnd.oci.image.layout.v1+tar';
  if (type === 'docker') return 'application/vnd.docker.image.tarball.v1+tar';
  return 'application/x-tar';
}

function decodeOp(bytes: Uint8Array | null | undefined): pb.Op {
  if (!bytes || bytes.length === 0) throw new InvalidTaskError('the task carries no op');
  try {
    return pb.Op.decode(bytes);
  } catch (err) {
    throw new InvalidTaskError(`the task's op does not decode: ${errText(err)}`, err);
  }
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** A thrown error as a TaskError: KilnError code and retryable; exit code and tail of a process. */
export function taskErrorOf(err: unknown): TaskErrorInit {
  // Unknown errors are retryable, as the consumer treats them (another attempt may succeed).
  const k = err instanceof KilnError ? err : asKilnError(err, 'TASK_FAILED');
  const retryable = err instanceof KilnError ? err.retryable : true;
  const out: TaskErrorInit = { code: k.code, message: k.message, retryable };
  const exitCode = k.details.exitCode;
  if (typeof exitCode === 'number') out.exitCode = exitCode;
  const tail = k.details.tail;
  if (typeof tail === 'string' && tail !== '') out.outputTail = tail.replace(/\n$/, '').split('\n');
  // Short scalar details travel too (what the scheduler acts on: a lost input's result id).
  const details: Record<string, string> = {};
  for (const [key, v] of Object.entries(k.details)) {
    if (key === 'tail' || key === 'exitCode') continue;
    if (typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean') continue;
    const text = String(v);
    if (text.length <= 512) details[key] = text;
  }
  if (Object.keys(details).length > 0) out.details = details;
  return out;
}

/** Live process output as progress lines (complete lines only; partial ones wait for more). */
class OutputLines {
  readonly #partial = new Map<1 | 2, string>();
  readonly #decoder = new Map<1 | 2, TextDecoder>();

  constructor(private readonly progress: (p: ProgressUpdate) => void) {}

  write(stream: 1 | 2, data: Uint8Array): void {
    let dec = this.#decoder.get(stream);
    if (!dec) this.#decoder.set(stream, (dec = new TextDecoder()));
    const text = (this.#partial.get(stream) ?? '') + dec.decode(data, { stream: true });
    const lines = text.split('\n');
    this.#partial.set(stream, lines.pop() ?? '');
    this.#emit(lines);
  }

  flush(): void {
    const rest = [...this.#partial.values()].filter((l) => l !== '');
    this.#partial.clear();
    this.#emit(rest);
  }

  #emit(lines: string[]): void {
    for (let i = 0; i < lines.length; i += PROGRESS_LINES) {
      this.progress({ stage: 'output', lines: lines.slice(i, i + PROGRESS_LINES) });
    }
  }
}
