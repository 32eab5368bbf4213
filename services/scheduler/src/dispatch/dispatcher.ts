/**
 * The dispatch core of the distributed scheduler: it turns "run this task" into a result, once per
 * cache key across every build, on a worker of the task's platform, preferably the one that holds
 * its inputs, surviving worker deaths, nats-server restarts and its own restart.
 *
 * State lives on the bus, not here: the `kiln_tasks` record of a key (see `@kiln/bus`
 * task-record.ts) is the truth, changed only by compare-and-set; this class keeps an in-memory
 * entry per key it waits for, fed by a watch of the bucket, and a live view of the workers. A new
 * Dispatcher (after a restart) that is asked for a key picks up the record: a stored result is
 * returned, a running attempt is waited for, a queued one is re-dispatched.
 *
 * Concurrency: every action on one key runs in order on that key's chain; actions on different
 * keys run concurrently.
 */
import { randomUUID } from 'node:crypto';
import { context, propagation } from '@opentelemetry/api';
import type {
  Bus,
  BusOptions,
  Placement,
  StoredRecord,
  TaskInit,
  TaskProgress,
  TaskRecord,
  TaskResult,
} from '@kiln/bus';
import {
  MAX_DELIVERIES_ADVISORY,
  OFFER_WAIT_HEADER,
  PROGRESS_SUBJECT_PREFIX,
  TASK_STREAM,
  queueMessageExists,
  casRecord,
  createRecord,
  decodeJson,
  decodeResult,
  decodeTask,
  encodeAttemptTask,
  encodeResult,
  encodeTask,
  failRule,
  fromBase64,
  fusedStepRecord,
  getRecord,
  joinRule,
  leaveRule,
  offerSubject,
  openBus,
  recordHeaderValues,
  redispatchRule,
  replaceRule,
  resultLostRule,
  isPermanentBusError,
  retrying,
  serveRecords,
  taskKey,
  taskSubject,
  toBase64,
  watchLoop,
} from '@kiln/bus';
import type { OfferReply } from '@kiln/bus';
import { KilnError, formatPlatform, platformFromPb, reviveError, workerpb } from '@kiln/protocol';
import type { Platform } from '@kiln/protocol';
import { KvWatchInclude } from '@nats-io/kv';
import type { KvWatchEntry } from '@nats-io/kv';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { headers } from '@nats-io/transport-node';
import {
  DispatcherClosedError,
  NoWorkerError,
  TaskCancelledError,
  TaskFailedError,
  TaskTooLargeError,
} from './errors.js';
import type { DispatchEvent } from './events.js';
import { planPlacement } from './placement.js';
import { WorkerTable } from './worker-table.js';

/** nats-server's default max_payload, when the connection has not said its own. */
const DEFAULT_MAX_PAYLOAD = 1024 * 1024;
/** A task record's fields besides the task itself (ids, builds, times), generously. */
const RECORD_OVERHEAD = 16 * 1024;

export interface DispatcherOptions {
  /** A connection with reconnects enabled (`maxReconnectAttempts: -1`). Not closed by close(). */
  nc: NatsConnection;
  bus?: BusOptions;
  /** How long the worker holding a task's inputs may take to claim it. Default 100 ms. */
  affinityDelayMs?: number;
  /** A worker unheard of this long is presumed dead and its tasks re-dispatched. Default 3 s. */
  heartbeatTimeoutMs?: number;
  /** Attempts of one task (worker deaths and retryable errors count). Default 3. */
  maxAttempts?: number;
  /** How often holders and queued tasks are checked. Default 250 ms. */
  monitorIntervalMs?: number;
  /** A task no live worker can run fails after this long. Default 30 s. */
  noWorkerTimeoutMs?: number;
  /**
   * How often a queued attempt's queue message is checked for (a message lost to an operator's
   * purge, a missed max-deliveries advisory, a stream restored without it): a lost one is
   * published again under the same attempt. Default 30 s.
   */
  queueCheckMs?: number;
  /** Offer tasks to the holders of their inputs first. Default true (false: benchmarks). */
  affinity?: boolean;
  /** Typed events (libraries do not log). */
  onEvent?: (e: DispatchEvent) => void;
}

interface CompiledOptions {
  affinityDelayMs: number;
  heartbeatTimeoutMs: number;
  maxAttempts: number;
  monitorIntervalMs: number;
  noWorkerTimeoutMs: number;
  queueCheckMs: number;
  affinity: boolean;
  onEvent: (e: DispatchEvent) => void;
}

export interface SubmitOptions {
  /** Workers to offer the task to first (e.g. the ones that produced its inputs). */
  preferredWorkers?: readonly string[];
  /** The build waiting; default: the task's build_id. Cancel with {@link Dispatcher.cancel}. */
  buildId?: string;
  /** Aborting stops this build's wait (and the task, if no other build waits for it). */
  signal?: AbortSignal;
  onProgress?: (p: TaskProgress) => void;
}

interface Waiter {
  buildId: string;
  resolve: (r: TaskResult) => void;
  reject: (e: Error) => void;
  onProgress?: (p: TaskProgress) => void;
}

interface Entry {
  key: string;
  cacheKey: string;
  platform: Platform;
  /** The task without attempt fields (from this submit, or from the adopted record). */
  task: TaskInit;
  /** `task` encoded (the record's `task`, and the prefix of every attempt's copy). */
  clean?: Uint8Array;
  preferred: readonly string[];
  waiters: Waiter[];
  stored?: StoredRecord;
  chain: Promise<void>;
  noWorkerSince?: number;
  /** Token of an attempt whose re-dispatch is already on the chain (monitor dedup). */
  pendingFor?: string;
  /** The queue message of an attempt published here: withdrawn when the task is cancelled. */
  queued?: { token: string; seq: number };
  /** When the monitor next checks that `queued`'s message is still on the queue. */
  queueCheckAt?: number;
  /**
   * The first submitter's trace context (W3C `traceparent`, `tracestate`), sent as NATS headers
   * with every attempt so the worker's task span joins the build's trace. Empty without an SDK.
   */
  trace: Record<string, string>;
}

export class Dispatcher {
  readonly #bus: Bus;
  readonly #o: CompiledOptions;
  readonly #entries = new Map<string, Entry>();
  readonly #workers: WorkerTable;
  readonly #abort = new AbortController();
  readonly #subs: Subscription[] = [];
  #timer: NodeJS.Timeout | undefined;
  /** Task watch entries received and not applied yet: applied together, once per loop turn. */
  #watched: KvWatchEntry[] = [];
  #watchedScheduled = false;
  #connected = true;

  private constructor(bus: Bus, o: CompiledOptions) {
    this.#bus = bus;
    this.#o = o;
    this.#workers = new WorkerTable(o.heartbeatTimeoutMs);
  }

  /** Opens the bus, starts watching workers and task records, and the monitor. */
  static async start(opts: DispatcherOptions): Promise<Dispatcher> {
    const bus = await openBus(opts.nc, opts.bus);
    const d = new Dispatcher(bus, {
      affinityDelayMs: opts.affinityDelayMs ?? 100,
      heartbeatTimeoutMs: opts.heartbeatTimeoutMs ?? 3_000,
      maxAttempts: opts.maxAttempts ?? 3,
      monitorIntervalMs: opts.monitorIntervalMs ?? 250,
      noWorkerTimeoutMs: opts.noWorkerTimeoutMs ?? 30_000,
      queueCheckMs: opts.queueCheckMs ?? 30_000,
      affinity: opts.affinity ?? true,
      onEvent: opts.onEvent ?? (() => undefined),
    });
    await d.#startWatches();
    return d;
  }

  /** The bus handles (stream, buckets) this dispatcher uses. */
  get bus(): Bus {
    return this.#bus;
  }

  /**
   * Tasks submitted and not finished (queued for a worker or running), by platform
   * (`os/arch[/variant]`): the metrics' queue depth.
   */
  pendingByPlatform(): Map<string, number> {
    const out = new Map<string, number>();
    for (const e of this.#entries.values()) {
      if (e.waiters.length === 0) continue;
      const p = formatPlatform(e.platform);
      out.set(p, (out.get(p) ?? 0) + 1);
    }
    return out;
  }

  /** Workers alive now, as last registered. */
  liveWorkers(): ReturnType<WorkerTable['alive']> {
    return this.#workers.alive();
  }

  /**
   * Runs a task (once per cache key) and resolves with the accepted result. A second submit of
   * a key that is pending joins it; a key already done returns the stored result. Rejects with
   * {@link TaskFailedError} (or the task's own error code), {@link TaskCancelledError},
   * {@link NoWorkerError} or {@link DispatcherClosedError}.
   */
  submit(task: TaskInit, opts: SubmitOptions = {}): Promise<TaskResult> {
    if (this.#abort.signal.aborted) return Promise.reject(new DispatcherClosedError());
    const cacheKey = task.cacheKey ?? '';
    const key = taskKey(cacheKey);
    const platform = platformFromPb(task.platform);
    if (platform === undefined) {
      return Promise.reject(
        new TaskFailedError(
          'task has no platform',
          { cacheKey },
          { code: 'DISPATCH_INVALID_TASK' },
        ),
      );
    }
    const buildId = opts.buildId ?? task.buildId ?? '';
    return new Promise<TaskResult>((resolve, reject) => {
      const waiter: Waiter = { buildId, resolve, reject, onProgress: opts.onProgress };
      if (opts.signal) {
        const signal = opts.signal;
        if (signal.aborted) return reject(new TaskCancelledError('aborted', { cacheKey }));
        const onAbort = (): void => this.#leave(key, waiter, 'aborted');
        signal.addEventListener('abort', onAbort, { once: true });
        const done = (): void => signal.removeEventListener('abort', onAbort);
        waiter.resolve = (r) => (done(), resolve(r));
        waiter.reject = (e) => (done(), reject(e));
      }
      let entry = this.#entries.get(key);
      if (entry) {
        entry.waiters.push(waiter);
        const e = entry;
        this.#enqueue(e, () => this.#joinBuild(e, buildId));
        return;
      }
      const { attemptToken: _t, attempt: _a, ...clean } = task;
      const body = encodeTask(clean);
      const max = this.#tooLarge(body);
      if (max !== undefined) return reject(new TaskTooLargeError(body.length, max, cacheKey));
      entry = {
        key,
        cacheKey,
        platform,
        task: { ...clean, taskId: task.taskId || randomUUID() },
        preferred: opts.preferredWorkers ?? [],
        waiters: [waiter],
        chain: Promise.resolve(),
        trace: {},
      };
      propagation.inject(context.active(), entry.trace);
      this.#entries.set(key, entry);
      const e = entry;
      this.#enqueue(e, () => this.#begin(e, buildId));
    });
  }

  /**
   * Records the result of a step a worker ran fused into another task (`Task.chain`) under the
   * step's own key, as if it had run as `task`: a new `done` record naming the worker that made
   * it, and resolves with `result`. A key that exists (a cache hit, a task another build runs) or
   * that this dispatcher waits for is {@link submit}ted instead: its own result wins (equal keys
   * mean equal work). The caller vouches for `result` (it came with the fused task's accepted
   * result); its `taskId` is set to the task's.
   */
  async adopt(task: TaskInit, result: TaskResult, opts: SubmitOptions = {}): Promise<TaskResult> {
    if (this.#abort.signal.aborted) throw new DispatcherClosedError();
    const cacheKey = task.cacheKey ?? '';
    const key = taskKey(cacheKey);
    const platform = platformFromPb(task.platform);
    if (platform === undefined || this.#entries.has(key) || opts.signal?.aborted)
      return this.submit(task, opts);
    const { attemptToken: _t, attempt: _a, ...clean } = task;
    const body = encodeTask(clean);
    if (this.#tooLarge(body) !== undefined) return this.submit(task, opts);
    const own = workerpb.TaskResult.create({ ...result, taskId: task.taskId ?? '', cached: false });
    const nanosToMs = (v: TaskResult['startedUnixNano']): number =>
      Math.floor(Number(v ?? 0) / 1e6) || Date.now();
    const record = fusedStepRecord({
      taskId: task.taskId ?? '',
      cacheKey,
      platform: formatPlatform(platform),
      builds: [opts.buildId ?? task.buildId ?? ''],
      task: toBase64(body),
      result: toBase64(encodeResult(own)),
      holder: result.workerId,
      startedAt: nanosToMs(result.startedUnixNano),
      finishedAt: nanosToMs(result.completedUnixNano),
    });
    const revision = await this.#retry(() => createRecord(this.#bus.tasks, key, record));
    if (revision === false) return this.submit(task, opts);
    this.#o.onEvent({ type: 'adopted', taskId: record.taskId, cacheKey, worker: result.workerId });
    return own;
  }

  /** The bound a task's record breaks ({@link TaskTooLargeError}), or undefined when it fits. */
  #tooLarge(body: Uint8Array): number | undefined {
    // The record carries the task in base64 beside its other fields: refuse what cannot fit
    // in one bus message rather than retry a write that can never succeed.
    const max = this.#bus.nc.info?.max_payload ?? DEFAULT_MAX_PAYLOAD;
    const recordSize = Math.ceil(body.length / 3) * 4 + RECORD_OVERHEAD;
    return recordSize > max ? max : undefined;
  }

  /**
   * The result `holder` made for `cacheKey` is lost (the holder is gone or no longer has it, and
   * some of its layers have no blob): its done record fails (`TASK_RESULT_LOST`), so the next
   * submit of the key runs the task again. A record that moved on (rerun elsewhere, or its blobs
   * uploaded meanwhile) is left as it is.
   */
  async forgetResult(cacheKey: string, holder: string): Promise<void> {
    const key = taskKey(cacheKey);
    const found = await this.#retry(() => getRecord(this.#bus.tasks, key));
    if (!found) return;
    const out = await this.#retry(() =>
      casRecord(this.#bus.tasks, key, (cur) => resultLostRule(cur, holder), found),
    );
    if (out.applied)
      this.#o.onEvent({ type: 'result-lost', taskId: out.record?.taskId ?? '', worker: holder });
  }

  /** Stops waiting for a build's tasks; tasks no other build waits for are cancelled. */
  cancel(buildId: string): void {
    for (const e of [...this.#entries.values()]) {
      for (const w of e.waiters.filter((x) => x.buildId === buildId))
        this.#leave(e.key, w, 'cancelled');
    }
  }

  /**
   * Stops watching and monitoring. Pending submits reject with {@link DispatcherClosedError};
   * task records stay, so a new Dispatcher can pick them up.
   */
  async close(): Promise<void> {
    if (this.#abort.signal.aborted) return;
    this.#abort.abort();
    clearInterval(this.#timer);
    for (const s of this.#subs) s.unsubscribe();
    const chains = [...this.#entries.values()].map((e) => e.chain);
    for (const e of this.#entries.values())
      for (const w of e.waiters) w.reject(new DispatcherClosedError());
    this.#entries.clear();
    await Promise.allSettled(chains);
  }

  // ---- internals ----

  async #startWatches(): Promise<void> {
    const signal = this.#abort.signal;
    const onError = (where: string) => (error: unknown) =>
      this.#o.onEvent({ type: 'error', where, error });
    await watchLoop({
      nc: this.#bus.nc,
      kv: this.#bus.workers,
      watch: {},
      signal,
      onEntry: (e) => this.#workers.apply(e),
      onOpen: (reopened) => reopened && this.#workers.refreshAll(),
      onError: onError('workers-watch'),
    });
    await watchLoop({
      nc: this.#bus.nc,
      kv: this.#bus.tasks,
      watch: { include: KvWatchInclude.UpdatesOnly },
      signal,
      onEntry: (e) => {
        this.#watched.push(e);
        if (this.#watchedScheduled) return;
        this.#watchedScheduled = true;
        setImmediate(() => this.#applyWatched());
      },
      // Updates may have been missed while the watch was down: re-read every pending record.
      onOpen: (reopened) => {
        if (reopened)
          for (const e of this.#entries.values()) this.#enqueue(e, () => this.#reread(e));
      },
      onError: onError('tasks-watch'),
    });
    this.#subs.push(
      // Workers never write records: they ask here, and the rules are applied for the identity
      // their subject carries (the holder of the claim, under the farm's NATS permissions).
      serveRecords(this.#bus, {
        known: (key) => this.#entries.get(key)?.stored,
        // A worker's claim or result is acted on as soon as it is written here, not when the
        // watch brings the same write back (a trip through JetStream per step of a chain).
        onApplied: (key, stored) => {
          const entry = this.#entries.get(key);
          if (entry) this.#observe(entry, stored);
        },
        onRefused: (r) => this.#o.onEvent({ type: 'record-refused', ...r }),
        onError: onError('records'),
      }),
      this.#bus.nc.subscribe(`${PROGRESS_SUBJECT_PREFIX}.>`, {
        callback: (err, msg) => {
          if (err) return;
          const key = msg.subject.slice(PROGRESS_SUBJECT_PREFIX.length + 1);
          const entry = this.#entries.get(key);
          if (!entry) return;
          const p = decodeJson<TaskProgress>(msg.data);
          if (p.attemptToken !== entry.stored?.record.attemptToken) return;
          for (const w of entry.waiters) w.onProgress?.(p);
        },
      }),
      this.#bus.nc.subscribe(MAX_DELIVERIES_ADVISORY, {
        callback: (err, msg) => {
          if (!err)
            void this.#onMaxDeliveries(
              decodeJson<{ stream_seq: number; consumer: string }>(msg.data),
            );
        },
      }),
    );
    void (async () => {
      for await (const s of this.#bus.nc.status()) {
        if (s.type === 'disconnect') this.#connected = false;
        if (s.type === 'reconnect') {
          this.#connected = true;
          // Nobody's heartbeats arrived while we were away: restart every worker's clock.
          this.#workers.refreshAll();
        }
      }
    })();
    this.#timer = setInterval(() => this.#monitor(), this.#o.monitorIntervalMs);
    this.#timer.unref();
  }

  /**
   * A queue message reached MaxDeliver (every holder died, or it was handed back too often): the
   * server keeps it but never delivers it again. Delete it, and if it carried the live attempt
   * of a task we wait for, place that attempt again.
   */
  async #onMaxDeliveries(a: { stream_seq: number; consumer: string }): Promise<void> {
    try {
      const m = await this.#bus.jsm.streams.getMessage(TASK_STREAM, { seq: a.stream_seq });
      const task = m ? decodeTask(m.data) : undefined;
      await this.#bus.jsm.streams.deleteMessage(TASK_STREAM, a.stream_seq, false);
      this.#o.onEvent({ type: 'stale-message-deleted', seq: a.stream_seq, consumer: a.consumer });
      const e = task?.cacheKey ? this.#entries.get(taskKey(task.cacheKey)) : undefined;
      const r = e?.stored?.record;
      if (e && task && r?.state === 'queued' && r.attemptToken === task.attemptToken) {
        this.#enqueue(e, () => this.#redispatch(e, task.attemptToken, 'adopted', false));
      }
    } catch (error) {
      this.#o.onEvent({ type: 'error', where: 'max-deliveries', error });
    }
  }

  #enqueue(e: Entry, fn: () => Promise<void>): void {
    e.chain = e.chain.then(fn).catch((error: unknown) => {
      if (this.#abort.signal.aborted) return;
      this.#o.onEvent({ type: 'error', where: 'task', error });
      // A bus call kept failing past the retry window (NATS away for a minute): the state of the
      // attempt is unknown here, so fail the waits clearly rather than leave them hanging. The
      // record stays; submitting again picks it up.
      if (this.#entries.get(e.key) !== e) return;
      // An error no retry can cure (a message the bus refuses) is the task's own failure.
      const err =
        error instanceof KilnError && !error.retryable
          ? error
          : isPermanentBusError(error)
            ? new KilnError('DISPATCH_BUS_REFUSED', `the bus refused the task: ${String(error)}`, {
                cause: error,
                details: { cacheKey: e.cacheKey },
              })
            : new KilnError('DISPATCH_BUS_UNAVAILABLE', 'task bus unavailable', {
                cause: error,
                retryable: true,
                details: { cacheKey: e.cacheKey },
              });
      this.#settle(e, (w) => w.reject(err));
    });
  }

  /** First action on a new entry: create the record (dedup point) or pick up the existing one. */
  async #begin(e: Entry, buildId: string): Promise<void> {
    const plan = this.#plan(e);
    // Read first: a key that exists (a cache hit, or a task another build runs) is answered by
    // one read, where a create first costs a refused write and two reads (`kv.create` reads
    // again to tell a deleted key from a live one). A new key costs one read more.
    const existing = await this.#retry(() => getRecord(this.#bus.tasks, e.key));
    if (existing) return this.#beginExisting(e, buildId, existing, plan);
    const now = Date.now();
    const base: TaskRecord = {
      v: 1,
      taskId: e.task.taskId ?? '',
      cacheKey: e.cacheKey,
      platform: formatPlatform(e.platform),
      attempt: 0,
      attemptToken: '',
      state: 'queued',
      builds: [buildId],
      task: toBase64(this.#clean(e)),
      createdAt: now,
      dispatchedAt: now,
    };
    const first = redispatchRule(base, plan.placement, plan.offerTo);
    const revision = await this.#retry(() => createRecord(this.#bus.tasks, e.key, first));
    if (revision !== false) {
      this.#setStored(e, { record: first, revision });
      await this.#deliver(e, first, revision);
      return;
    }
    // The key exists: another submit (another build, another scheduler instance) was first.
    const found = await this.#retry(() => getRecord(this.#bus.tasks, e.key));
    if (!found) return this.#begin(e, buildId); // deleted meanwhile (TTL): start over
    return this.#beginExisting(e, buildId, found, plan);
  }

  /** {@link #begin} of a key whose record exists: join it, or start a new series if it ended. */
  async #beginExisting(
    e: Entry,
    buildId: string,
    found: StoredRecord,
    plan: { placement: Placement; offerTo?: string },
  ): Promise<void> {
    this.#adoptTask(e, found.record);
    const r = found.record;
    if (r.state === 'failed' || r.state === 'cancelled') {
      // A previous run ended without a result: this submit starts a new series of attempts.
      const out = await this.#cas(
        e,
        (cur) =>
          cur.state === 'failed' || cur.state === 'cancelled'
            ? redispatchRule(
                { ...cur, attempt: 0, builds: [buildId] },
                plan.placement,
                plan.offerTo,
              )
            : undefined,
        found,
      );
      if (out.applied && out.record) return this.#deliver(e, out.record, out.revision);
      return this.#react(e);
    }
    this.#setStored(e, found);
    if (r.state !== 'done') await this.#joinBuild(e, buildId);
    if (r.state === 'queued') {
      // Queued by someone else, maybe a scheduler that died before (or while) placing it:
      // place it again under a new token; any older copy becomes stale.
      return this.#redispatch(e, r.attemptToken, 'adopted', false);
    }
    return this.#react(e);
  }

  /** Decodes the adopted record's task so that re-dispatches publish the original task. */
  #adoptTask(e: Entry, r: TaskRecord): void {
    const t = decodeTask(fromBase64(r.task));
    t.attemptToken = '';
    t.attempt = 0;
    e.task = t;
    e.clean = undefined;
  }

  #clean(e: Entry): Uint8Array {
    return (e.clean ??= encodeTask(e.task));
  }

  /** The copy of the record's attempt: the clean task followed by the attempt fields. */
  #attemptCopy(e: Entry, r: TaskRecord): { body: Uint8Array; cleanLength?: number } {
    if ((e.task.taskId ?? '') !== r.taskId) {
      const body = encodeTask({
        ...e.task,
        taskId: r.taskId,
        attemptToken: r.attemptToken,
        attempt: r.attempt,
      });
      return { body };
    }
    const clean = this.#clean(e);
    return {
      body: encodeAttemptTask(clean, r.attemptToken, r.attempt),
      cleanLength: clean.length,
    };
  }

  async #joinBuild(e: Entry, buildId: string): Promise<void> {
    const r = e.stored?.record;
    if (!r || r.builds.includes(buildId) || r.state === 'done') return;
    await this.#cas(e, (cur) => (cur.state === 'done' ? undefined : joinRule(cur, buildId)));
  }

  /**
   * Applies the task watch entries of one loop turn together. The watch iterator yields one
   * entry per microtask turn; applied as they come, the actions they start (settling a submit,
   * the caller's next submit and its record create) reach the connection staggered and leave in
   * a write each. Applied in one pass, those of one socket read leave in one write.
   */
  #applyWatched(): void {
    this.#watchedScheduled = false;
    const batch = this.#watched;
    this.#watched = [];
    if (this.#abort.signal.aborted) return;
    for (const e of batch) {
      const entry = this.#entries.get(e.key);
      if (!entry || e.operation !== 'PUT' || e.length === 0) continue;
      // Our own writes (the create, our compare-and-sets) come back too: skip them undecoded.
      if (entry.stored && e.revision <= entry.stored.revision) continue;
      this.#observe(entry, { record: decodeJson<TaskRecord>(e.value), revision: e.revision });
    }
  }

  #observe(e: Entry, s: StoredRecord): void {
    if (e.stored && s.revision <= e.stored.revision) return;
    this.#setStored(e, s);
    // #react has nothing to do for a claimed or normally queued attempt (the monitor watches
    // those): no action on the chain for them.
    const r = s.record;
    if (r.state === 'running' || (r.state === 'queued' && r.placement !== 'released')) return;
    this.#enqueue(e, () => this.#react(e));
  }

  #setStored(e: Entry, s: StoredRecord): void {
    if (!e.stored || s.revision > e.stored.revision) e.stored = s;
  }

  async #reread(e: Entry): Promise<void> {
    const s = await this.#retry(() => getRecord(this.#bus.tasks, e.key));
    if (s) this.#setStored(e, s);
    await this.#react(e);
  }

  /** Acts on the entry's latest record. */
  async #react(e: Entry): Promise<void> {
    const r = e.stored?.record;
    if (!r || this.#entries.get(e.key) !== e) return;
    switch (r.state) {
      case 'done': {
        const result = decodeResult(fromBase64(r.result ?? ''));
        this.#o.onEvent({
          type: 'completed',
          taskId: r.taskId,
          worker: r.holder ?? '',
          attempt: r.attempt,
        });
        return this.#settle(e, (w) => w.resolve(result));
      }
      case 'failed': {
        const err = r.error ?? {
          code: 'DISPATCH_TASK_FAILED',
          message: 'task failed',
          retryable: false,
        };
        this.#o.onEvent({ type: 'failed', taskId: r.taskId, code: err.code, attempts: r.attempt });
        const details = {
          cacheKey: r.cacheKey,
          taskId: r.taskId,
          vertexDigest: e.task.vertexDigest ?? '',
          attempts: r.attempt,
        };
        const error =
          err.code === 'DISPATCH_NO_WORKER'
            ? new NoWorkerError(r.platform, this.#o.noWorkerTimeoutMs)
            : reviveError(
                err.code,
                err.message,
                {
                  ...err.details,
                  ...details,
                  ...(err.exitCode ? { exitCode: err.exitCode } : {}),
                },
                err.retryable,
              );
        return this.#settle(e, (w) => w.reject(error));
      }
      case 'cancelled':
        return this.#settle(e, (w) =>
          w.reject(new TaskCancelledError('task cancelled', { cacheKey: r.cacheKey })),
        );
      case 'errored':
        if (r.error?.retryable && r.attempt < this.#o.maxAttempts) {
          return this.#redispatch(e, r.attemptToken, 'retry', true);
        }
        await this.#cas(e, (cur) =>
          cur.attemptToken === r.attemptToken && cur.state === 'errored'
            ? failRule(
                cur,
                cur.error ?? {
                  code: 'DISPATCH_TASK_FAILED',
                  message: 'task failed',
                  retryable: false,
                },
              )
            : undefined,
        );
        return this.#react(e);
      case 'queued':
        if (r.placement === 'released')
          return this.#redispatch(e, r.attemptToken, 'released', false);
        return;
      case 'running':
        return;
    }
  }

  #settle(e: Entry, fn: (w: Waiter) => void): void {
    this.#entries.delete(e.key);
    for (const w of e.waiters) fn(w);
    e.waiters = [];
  }

  #plan(e: Entry): { placement: Placement; offerTo?: string; capable: boolean } {
    const p = planPlacement(e.task, e.platform, e.preferred, this.#workers.alive());
    if (p.offerTo && this.#o.affinity)
      return { placement: 'offer', offerTo: p.offerTo, capable: p.capable };
    return { placement: p.queue, capable: p.capable };
  }

  /** Starts a new attempt (fresh token) of the attempt `token`, unless it moved on meanwhile. */
  async #redispatch(
    e: Entry,
    token: string,
    reason: 'holder-lost' | 'retry' | 'adopted' | 'released',
    count: boolean,
  ): Promise<void> {
    const plan = this.#plan(e);
    const out = await this.#cas(e, (cur) => {
      if (
        cur.attemptToken !== token ||
        (cur.state !== 'running' && cur.state !== 'queued' && cur.state !== 'errored')
      )
        return undefined;
      if (count && cur.attempt >= this.#o.maxAttempts) {
        const last = cur.error ?? {
          code: 'DISPATCH_WORKER_LOST',
          message: `worker ${cur.holder ?? '?'} was lost while running the task`,
          retryable: true,
        };
        return failRule(cur, {
          ...last,
          message: `${last.message} (after ${cur.attempt} attempts)`,
        });
      }
      return redispatchRule(cur, plan.placement, plan.offerTo, { countAttempt: count });
    });
    e.pendingFor = undefined;
    if (!out.applied || !out.record) return this.#react(e);
    if (out.record.state === 'failed') return this.#react(e);
    this.#o.onEvent({
      type: 'redispatched',
      taskId: out.record.taskId,
      attempt: out.record.attempt,
      reason,
    });
    await this.#deliver(e, out.record, out.revision);
  }

  /** Places the record's current attempt: an offer first if planned, then the platform queue. */
  async #deliver(e: Entry, r: TaskRecord, revision: number): Promise<void> {
    const task = this.#attemptCopy(e, r);
    if (r.placement === 'offer' && r.offeredTo) {
      this.#o.onEvent({
        type: 'dispatched',
        taskId: r.taskId,
        cacheKey: r.cacheKey,
        attempt: r.attempt,
        placement: 'offer',
        worker: r.offeredTo,
      });
      const reply = await this.#offer(e, r.offeredTo, task, r, revision);
      if (reply.accepted) return;
      this.#o.onEvent({
        type: 'offer-declined',
        taskId: r.taskId,
        worker: r.offeredTo,
        reason: reply.reason ?? 'timeout',
      });
      const plan = this.#plan({ ...e, preferred: [] });
      const queue = plan.placement === 'emulated' ? 'emulated' : 'native';
      const out = await this.#cas(e, (cur) => replaceRule(cur, r.attemptToken, queue));
      if (!out.applied || !out.record) return; // claimed meanwhile (a late accept), or moved on
      return this.#publish(e, out.record, out.revision, task, queue);
    }
    return this.#publish(e, r, revision, task, r.placement === 'emulated' ? 'emulated' : 'native');
  }

  async #publish(
    e: Entry,
    r: TaskRecord,
    revision: number,
    task: { body: Uint8Array; cleanLength?: number },
    queue: 'native' | 'emulated',
  ): Promise<void> {
    this.#o.onEvent({
      type: 'dispatched',
      taskId: r.taskId,
      cacheKey: r.cacheKey,
      attempt: r.attempt,
      placement: queue,
    });
    const h = headers();
    for (const [k, v] of recordHeaderValues(r, revision, task.cleanLength)) h.set(k, v);
    for (const [k, v] of Object.entries(e.trace)) h.set(k, v);
    const ack = await this.#retry(() =>
      this.#bus.js.publish(taskSubject(e.platform, queue === 'emulated'), task.body, {
        headers: h,
      }),
    );
    e.queued = { token: r.attemptToken, seq: ack.seq };
  }

  async #offer(
    e: Entry,
    workerId: string,
    task: { body: Uint8Array; cleanLength?: number },
    r: TaskRecord,
    revision: number,
  ): Promise<OfferReply> {
    const h = headers();
    h.set(OFFER_WAIT_HEADER, String(this.#o.affinityDelayMs));
    for (const [k, v] of recordHeaderValues(r, revision, task.cleanLength)) h.set(k, v);
    for (const [k, v] of Object.entries(e.trace)) h.set(k, v);
    try {
      const msg = await this.#bus.nc.request(offerSubject(workerId), task.body, {
        timeout: this.#o.affinityDelayMs + 250,
        headers: h,
      });
      return decodeJson<OfferReply>(msg.data);
    } catch {
      // Timeout or no responders (the worker is gone): declined.
      return { accepted: false };
    }
  }

  #leave(key: string, waiter: Waiter, why: 'aborted' | 'cancelled'): void {
    const e = this.#entries.get(key);
    if (!e || !e.waiters.includes(waiter)) return;
    e.waiters = e.waiters.filter((w) => w !== waiter);
    waiter.reject(
      new TaskCancelledError(`build ${waiter.buildId} ${why}`, { cacheKey: e.cacheKey }),
    );
    if (e.waiters.some((w) => w.buildId === waiter.buildId)) return;
    if (e.waiters.length === 0) this.#entries.delete(key);
    this.#enqueue(e, async () => {
      const out = await this.#cas(e, (cur) => leaveRule(cur, waiter.buildId));
      if (out.applied && out.record?.state === 'cancelled') await this.#withdraw(e, out.record);
    });
  }

  /**
   * Takes a cancelled task's queue message off the queue, so that no worker even pulls it (one
   * that does is refused its claim: the record is cancelled). An attempt on an offer, or claimed,
   * has no message left to take; one already delivered is gone when acknowledged.
   */
  async #withdraw(e: Entry, r: TaskRecord): Promise<void> {
    const q = e.queued;
    if (!q || q.token !== r.attemptToken) return;
    e.queued = undefined;
    const deleted = await this.#bus.jsm.streams
      .deleteMessage(TASK_STREAM, q.seq, false)
      .catch(() => false); // acknowledged (claimed) meanwhile, or NATS away: the claim fences it
    if (deleted) this.#o.onEvent({ type: 'task-withdrawn', taskId: r.taskId, seq: q.seq });
  }

  /**
   * Publishes a queued attempt's copy again when its queue message is gone while the record still
   * waits for it (nothing else would ever run it). The same token: if the old copy turns up after
   * all, whichever is claimed first runs and the other is stale.
   */
  async #requeueIfLost(e: Entry, q: { token: string; seq: number }): Promise<void> {
    const lost = (await queueMessageExists(this.#bus, q.seq)) === false;
    const cur = e.stored;
    if (!lost || !cur || cur.record.state !== 'queued' || cur.record.attemptToken !== q.token)
      return;
    this.#o.onEvent({ type: 'task-requeued', taskId: cur.record.taskId, seq: q.seq });
    const queue = cur.record.placement === 'emulated' ? 'emulated' : 'native';
    await this.#publish(e, cur.record, cur.revision, this.#attemptCopy(e, cur.record), queue);
  }

  async #cas(e: Entry, change: (r: TaskRecord) => TaskRecord | undefined, known?: StoredRecord) {
    const out = await this.#retry(() =>
      casRecord(this.#bus.tasks, e.key, change, known ?? e.stored),
    );
    if (out.record) this.#setStored(e, { record: out.record, revision: out.revision });
    return out;
  }

  #retry<T>(fn: () => Promise<T>): Promise<T> {
    return retrying(fn, { signal: this.#abort.signal, timeoutMs: 60_000 });
  }

  #monitor(): void {
    if (!this.#connected || this.#abort.signal.aborted) return;
    const now = Date.now();
    for (const id of this.#workers.expire(this.#o.heartbeatTimeoutMs * 20, now)) {
      this.#bus.workers.delete(id).catch((error: unknown) => {
        this.#o.onEvent({ type: 'error', where: 'expire-worker', error });
      });
    }
    const live = this.#workers.alive(now);
    const plans = new Map<string, ReturnType<typeof planPlacement>>();
    for (const e of this.#entries.values()) {
      const r = e.stored?.record;
      if (!r || e.pendingFor === r.attemptToken) continue;
      if (
        r.state === 'running' &&
        r.holder &&
        !this.#workers.isAlive(r.holder, now, r.holderBoot)
      ) {
        e.pendingFor = r.attemptToken;
        this.#enqueue(e, () => this.#redispatch(e, r.attemptToken, 'holder-lost', true));
        continue;
      }
      if (r.state !== 'queued') {
        e.noWorkerSince = undefined;
        continue;
      }
      const pk = e.stored?.record.platform ?? '';
      let plan = plans.get(pk);
      if (!plan) {
        plan = planPlacement({}, e.platform, [], live);
        plans.set(pk, plan);
      }
      if (!plan.capable) {
        e.noWorkerSince ??= now;
        if (now - e.noWorkerSince >= this.#o.noWorkerTimeoutMs) {
          e.pendingFor = r.attemptToken;
          this.#enqueue(e, async () => {
            await this.#cas(e, (cur) =>
              cur.attemptToken === r.attemptToken && cur.state === 'queued'
                ? failRule(cur, {
                    code: 'DISPATCH_NO_WORKER',
                    message: `no worker for platform ${r.platform}`,
                    retryable: true,
                  })
                : undefined,
            );
            e.pendingFor = undefined;
            await this.#react(e);
          });
        }
        continue;
      }
      e.noWorkerSince = undefined;
      const q = e.queued;
      if (
        q &&
        q.token === r.attemptToken &&
        now >= (e.queueCheckAt ??= now + this.#o.queueCheckMs)
      ) {
        e.queueCheckAt = now + this.#o.queueCheckMs;
        e.pendingFor = r.attemptToken;
        this.#enqueue(e, async () => {
          try {
            await this.#requeueIfLost(e, q);
          } finally {
            e.pendingFor = undefined;
          }
        });
        continue;
      }
      if (r.placement === 'native' && plan.queue === 'emulated') {
        // Only emulated workers are left for this platform: put a copy on their queue (same
        // token; whichever copy is claimed first runs, the other is stale).
        e.pendingFor = r.attemptToken;
        this.#enqueue(e, async () => {
          const out = await this.#cas(e, (cur) => replaceRule(cur, r.attemptToken, 'emulated'));
          e.pendingFor = undefined;
          if (out.applied && out.record) {
            const task = this.#attemptCopy(e, out.record);
            await this.#publish(e, out.record, out.revision, task, 'emulated');
          }
        });
      }
    }
  }
}
