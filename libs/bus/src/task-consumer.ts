/**
 * TaskConsumer: the worker's side of the task bus. It registers the worker in `kiln_workers` and
 * heartbeats, accepts offers for tasks whose inputs it holds, pulls its platforms' queues, claims
 * each attempt in `kiln_tasks` (compare-and-set on the attempt token) before running it through the
 * injected {@link RunTask}, keeps the claim alive, and reports the result under its token. Claims
 * and reports are requests to the scheduler (`kiln.record.<id>`, `@kiln/bus` record-service.ts),
 * which writes the record: a worker's NATS user cannot write `kiln_tasks`.
 *
 * Contract:
 * - At most `slots` tasks run at once. A pull is outstanding only for a free slot, so a busy
 *   worker never hoards queue messages that another worker could run.
 * - A task runs only after its claim succeeded; a copy whose token is not current (re-dispatched,
 *   cancelled, done elsewhere) is acknowledged and dropped without running.
 * - While a task runs, the claim is re-checked on every keepalive: when the attempt stops being
 *   this worker's (cancelled, or re-dispatched because the worker was presumed dead), the task's
 *   signal aborts and its result, if any, is discarded (the record's compare-and-set refuses it).
 * - `drain()` takes no new task, declines offers, finishes the running ones (or, after
 *   `drainTimeoutMs`, aborts them and hands their attempts back), then deregisters.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import type { Bus, BusOptions } from './bus.js';
import type { Task, TaskErrorInit, TaskResultInit } from './codec.js';
import type { OfferReply } from './offer.js';
import type { TaskProgress } from './progress.js';
import type { RecordRequest } from './record-service.js';
import type { WorkerInfo, WorkerPlatform } from './worker-info.js';
import { ensureTaskConsumer, openBus } from './bus.js';
import { decodeTask, encodeJson, encodeResult, toBase64 } from './codec.js';
import { OFFER_WAIT_HEADER } from './offer.js';
import { RecordClient } from './record-service.js';
import { pause, retrying } from './retry.js';
import { TASK_STREAM, assertWorkerId, offerSubject, progressSubject, taskKey } from './subjects.js';
import { getRecord, holds, taskErrorToRecord } from './task-record.js';
import { HELD_RESULTS_LIMIT, putWorkerInfo } from './worker-info.js';
import {
  KilnError,
  normalizePlatform,
  platformFromPb,
  platformMatches,
  toLong,
  truncateMiddle,
} from '@kiln/protocol';
import type { ConsumeCallback, Consumer, FetchOptions, JsMsg } from '@nats-io/jetstream';
import type { Msg, MsgHdrs, NatsConnection, Subscription } from '@nats-io/transport-node';
import { Attr, SpanName, tracer } from '@kiln/common';
import { ROOT_CONTEXT, SpanStatusCode, context, propagation, trace } from '@opentelemetry/api';
import type { Context, TextMapGetter } from '@opentelemetry/api';

/** Reads W3C trace context keys from a NATS message's headers. */
const headersGetter: TextMapGetter<MsgHdrs> = {
  keys: (h) => h.keys(),
  get: (h, key) => (h.has(key) ? h.get(key) : undefined),
};

/** What a task run produced: outputs, or an error (a thrown error is converted). */
export interface TaskOutcome {
  outputs?: NonNullable<TaskResultInit['outputs']>;
  cached?: boolean;
  error?: TaskErrorInit;
  /** Where the inputs came from (reported in the result for affinity statistics). */
  inputs?: { local: number; fetched: number; bytesFetched: number };
  /** The fused steps that ran (`Task.chain`), up to the first failed one (`TaskResult.chain`). */
  chain?: NonNullable<TaskResultInit['chain']>;
}

export interface ProgressUpdate {
  /** The fused step (`Task.chain`) the update is about, by vertex digest; absent: the task's op. */
  vertex?: string;
  stage?: string;
  lines?: string[];
  current?: number;
  total?: number;
}

/**
 * Runs one task. It must stop promptly when `signal` aborts (cancelled, or the attempt was taken
 * away); what it returns after that is discarded. A thrown KilnError keeps its code and
 * `retryable`; any other thrown error is reported as retryable `TASK_FAILED`.
 */
export type RunTask = (
  task: Task,
  signal: AbortSignal,
  progress: (p: ProgressUpdate) => void,
) => Promise<TaskOutcome>;

export type ConsumerEvent =
  | { type: 'registered'; workerId: string }
  | { type: 'claimed'; taskId: string; cacheKey: string; attempt: number; via: 'offer' | 'queue' }
  | { type: 'completed'; taskId: string; attempt: number; ok: boolean }
  | { type: 'stale'; taskId: string; attempt: number; why: 'claim' | 'keepalive' | 'report' }
  | { type: 'offer-declined'; taskId: string; reason: NonNullable<OfferReply['reason']> }
  | { type: 'handed-back'; taskId: string; attempt: number }
  | { type: 'drained'; workerId: string }
  | { type: 'error'; where: string; error: unknown };

export interface TaskConsumerOptions {
  /** A connection with reconnects enabled (`maxReconnectAttempts: -1`). Not closed here. */
  nc: NatsConnection;
  /** Worker id (`[A-Za-z0-9_-]`); default `<hostname>-<random>`. */
  id?: string;
  platforms: WorkerPlatform[];
  labels?: Record<string, string>;
  /** Tasks run at once. Default 1. */
  slots?: number;
  runTask: RunTask;
  bus?: BusOptions;
  /** Registration refresh. Default 1 s (the scheduler presumes death after 3 s by default). */
  heartbeatMs?: number;
  /** `working()` and claim re-check of a running task. Default 1 s. */
  keepaliveMs?: number;
  /** How long `drain()` lets running tasks finish before handing them back. Default 60 s. */
  drainTimeoutMs?: number;
  /**
   * How long a result waits for a scheduler to accept it (none running, or NATS away). Default
   * 10 min.
   */
  reportTimeoutMs?: number;
  /** Free disk for the registration. Default: unknown (0). */
  freeDiskBytes?: () => number;
  /** Result ids held locally besides the ones this consumer produced. */
  heldResults?: () => readonly string[];
  onEvent?: (e: ConsumerEvent) => void;
}

interface Running {
  task: Task;
  key: string;
  /** The scheduler's trace context from the message's headers (the vertex span). */
  trace: Context;
  abort: AbortController;
  /** Why the signal aborted: the attempt moved on, or the worker hands it back (drain). */
  why?: 'stale' | 'handback';
  done: Promise<void>;
}

interface SlotWaiter {
  kind: 'offer' | 'pull';
  /** true: the slot is granted (and counted); false: woken for the stop, nothing counted. */
  grant: (ok: boolean) => void;
}

/** `<hostname>-<random>`: the id of a worker that was given none. */
export function defaultWorkerId(): string {
  return `${hostname().replace(/[^A-Za-z0-9_-]/g, '-')}-${randomBytes(3).toString('hex')}`;
}

export class TaskConsumer {
  readonly id: string;
  /**
   * This process's incarnation of the worker `id` (a nonce per start): records claimed by an
   * earlier incarnation (a crashed process, restarted with the same id) are not this one's, and
   * the scheduler re-dispatches them as soon as this one registers.
   */
  readonly boot = randomBytes(12).toString('hex');
  readonly #o: Required<Omit<TaskConsumerOptions, 'nc' | 'bus' | 'id' | 'heldResults'>> & {
    heldResults?: () => readonly string[];
  };
  readonly #nc: NatsConnection;
  #bus!: Bus;
  /** Claims and reports: the scheduler writes the records ({@link RecordClient}). */
  readonly #records: RecordClient;
  readonly #running = new Map<string, Running>();
  /** Attempts this worker is claiming or running (settled when done): a copy is not run twice. */
  readonly #attempts = new Map<string, Promise<void>>();
  /** Slots granted (running or claiming). */
  #busy = 0;
  /** Pulls outstanding (each for a free slot). */
  #reserved = 0;
  readonly #waiters: SlotWaiter[] = [];
  /** Held result ids in recency order (a Map keeps insertion order: oldest first). */
  readonly #held = new Map<string, true>();
  readonly #stop = new AbortController();
  readonly #pullers: Promise<void>[] = [];
  /** Aborted by close(): in-flight pulls stop at once. */
  readonly #closing = new AbortController();
  #offerSub: Subscription | undefined;
  #heartbeat: NodeJS.Timeout | undefined;
  #seq = 0;
  readonly #startedAt = Date.now();
  #draining = false;
  #closed = false;

  constructor(opts: TaskConsumerOptions) {
    this.id = assertWorkerId(opts.id ?? defaultWorkerId());
    if (opts.platforms.length === 0)
      throw new KilnError('WORKER_NO_PLATFORM', 'a worker needs at least one platform');
    this.#nc = opts.nc;
    this.#records = new RecordClient(opts.nc, this.id, this.boot);
    this.#o = {
      platforms: opts.platforms.map((p) => ({ ...normalizePlatform(p), emulated: p.emulated })),
      labels: opts.labels ?? {},
      slots: Math.max(1, opts.slots ?? 1),
      runTask: opts.runTask,
      heartbeatMs: opts.heartbeatMs ?? 1_000,
      keepaliveMs: opts.keepaliveMs ?? 1_000,
      drainTimeoutMs: opts.drainTimeoutMs ?? 60_000,
      reportTimeoutMs: opts.reportTimeoutMs ?? 600_000,
      freeDiskBytes: opts.freeDiskBytes ?? (() => 0),
      heldResults: opts.heldResults,
      onEvent: opts.onEvent ?? (() => undefined),
    };
    this.#busOptions = opts.bus;
  }

  readonly #busOptions: BusOptions | undefined;

  /** Registers, starts heartbeating, listening for offers and pulling the platform queues. */
  async start(): Promise<void> {
    this.#bus = await openBus(this.#nc, this.#busOptions);
    const queues = this.#o.platforms.map((p) => ({ p, emulated: p.emulated }));
    const consumers = [];
    for (const q of queues) {
      const info = await ensureTaskConsumer(this.#bus, q.p, q.emulated);
      consumers.push({ ...q, name: info.name });
    }
    // Listen for offers before registering: the scheduler offers to a worker as soon as it sees it.
    this.#offerSub = this.#nc.subscribe(offerSubject(this.id), {
      callback: (err, msg) => {
        if (!err) this.#onOffer(msg);
      },
    });
    await this.#nc.flush();
    await this.#beat();
    this.#heartbeat = setInterval(() => void this.#beat(), this.#o.heartbeatMs);
    void (async () => {
      for await (const s of this.#nc.status()) {
        if (s.type === 'reconnect' && !this.#closed) void this.#beat();
      }
    })();
    this.#o.onEvent({ type: 'registered', workerId: this.id });
    for (const c of consumers) this.#pullers.push(this.#pullLoop(c.name, c.p, c.emulated));
  }

  /** Tasks running now. */
  get runningCount(): number {
    return this.#running.size;
  }

  /** Records result ids this worker now holds (placement prefers it for tasks that use them). */
  addHeld(resultIds: readonly string[]): void {
    for (const id of resultIds) {
      this.#held.delete(id);
      this.#held.set(id, true);
    }
    for (const id of this.#held.keys()) {
      if (this.#held.size <= HELD_RESULTS_LIMIT) break;
      this.#held.delete(id);
    }
  }

  /**
   * Takes no new task, finishes (or after the timeout hands back) the running ones, deregisters.
   * Idempotent. The connection stays open.
   */
  async drain(timeoutMs = this.#o.drainTimeoutMs): Promise<void> {
    if (this.#closed) return;
    if (!this.#draining) {
      this.#draining = true;
      await this.#beat();
      this.#stop.abort();
      this.#wakePullers();
    }
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>(
      (r) => (timer = setTimeout(() => r('timeout'), timeoutMs)),
    );
    const finished = Promise.all([...this.#running.values()].map((r) => r.done));
    const first = await Promise.race([finished, timedOut]);
    clearTimeout(timer);
    if (first === 'timeout') {
      for (const r of this.#running.values()) {
        r.why ??= 'handback';
        r.abort.abort();
      }
    }
    await Promise.all([...this.#running.values()].map((r) => r.done));
    await Promise.all(this.#pullers);
    await this.#shutdown();
    this.#o.onEvent({ type: 'drained', workerId: this.id });
  }

  /**
   * Stops at once without handing anything back (tests; a crash looks like this too): the
   * scheduler re-dispatches this worker's attempts once its heartbeat is missed.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#draining = true;
    this.#stop.abort();
    this.#closing.abort();
    for (const r of this.#running.values()) {
      r.why ??= 'stale';
      r.abort.abort();
    }
    this.#wakePullers();
    await Promise.allSettled([...this.#running.values()].map((r) => r.done));
    await Promise.allSettled(this.#pullers);
    this.#closed = true;
    clearInterval(this.#heartbeat);
    this.#offerSub?.unsubscribe();
  }

  async #shutdown(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#heartbeat);
    this.#offerSub?.unsubscribe();
    await retrying(() => this.#bus.workers.delete(this.id), { timeoutMs: 5_000 }).catch(
      (error: unknown) => this.#o.onEvent({ type: 'error', where: 'deregister', error }),
    );
  }

  #info(): WorkerInfo {
    return {
      v: 1,
      id: this.id,
      platforms: this.#o.platforms,
      labels: this.#o.labels,
      slots: this.#o.slots,
      freeSlots: Math.max(0, this.#o.slots - this.#busy),
      freeDiskBytes: this.#o.freeDiskBytes(),
      held: this.#heldSummary(),
      draining: this.#draining,
      boot: this.boot,
      startedAt: this.#startedAt,
      heartbeatAt: Date.now(),
      seq: ++this.#seq,
    };
  }

  #heldSummary(): string[] {
    const extra = this.#o.heldResults?.() ?? [];
    const all = [...extra.filter((x) => !this.#held.has(x)), ...this.#held.keys()];
    return all.slice(-HELD_RESULTS_LIMIT);
  }

  async #beat(): Promise<void> {
    if (this.#closed) return;
    try {
      await putWorkerInfo(this.#bus.workers, this.#info());
    } catch (error) {
      this.#o.onEvent({ type: 'error', where: 'heartbeat', error });
    }
  }

  // ---- slots ----

  #free(): number {
    return this.#o.slots - this.#busy - this.#reserved;
  }

  #pump(): void {
    // Offers first: they carry affinity, and they may take a slot an idle pull has reserved (a
    // message that then arrives for that pull is handed back). Pulls take what is left.
    for (let i = 0; i < this.#waiters.length && this.#busy < this.#o.slots;) {
      const w = this.#waiters[i];
      if (w?.kind !== 'offer') {
        i++;
        continue;
      }
      this.#waiters.splice(i, 1);
      this.#busy++;
      w.grant(true);
    }
    for (let i = 0; i < this.#waiters.length && this.#free() > 0;) {
      const w = this.#waiters[i];
      if (w?.kind !== 'pull') {
        i++;
        continue;
      }
      this.#waiters.splice(i, 1);
      this.#reserved++;
      w.grant(true);
    }
  }

  #wakePullers(): void {
    for (let i = this.#waiters.length - 1; i >= 0; i--) {
      const w = this.#waiters[i];
      if (w?.kind !== 'pull') continue;
      this.#waiters.splice(i, 1);
      w.grant(false);
    }
  }

  #releaseSlot(): void {
    this.#busy--;
    this.#pump();
  }

  /** Resolves true when a pull may be outstanding (a slot is reserved), false on stop. */
  #reservePull(): Promise<boolean> {
    if (this.#stop.signal.aborted) return Promise.resolve(false);
    if (this.#free() > 0 && !this.#waiters.some((w) => w.kind === 'offer')) {
      this.#reserved++;
      return Promise.resolve(true);
    }
    return new Promise((resolve) => {
      this.#waiters.push({
        kind: 'pull',
        grant: (ok) => {
          if (ok && this.#stop.signal.aborted) {
            this.#reserved--;
            ok = false;
          }
          resolve(ok);
        },
      });
    });
  }

  // ---- queue ----

  async #pullLoop(
    consumerName: string,
    platform: WorkerPlatform,
    emulated: boolean,
  ): Promise<void> {
    const signal = this.#stop.signal;
    let consumer: Consumer | undefined;
    while (!signal.aborted) {
      if (!(await this.#reservePull())) break;
      // One pull for every free slot: a single subscription per batch, not per message.
      const extra = Math.max(0, this.#free());
      this.#reserved += extra;
      let asked = 1 + extra;
      try {
        consumer ??= await this.#bus.js.consumers.get(TASK_STREAM, consumerName);
        // Callback delivery: the messages of one socket read are handled synchronously, so
        // their claims leave in one write (an iterator would interleave a flush per message).
        // nats.js types `callback` on consume() only; fetch() shares the implementation
        // (PullConsumerMessagesImpl) and honours it.
        const pull: FetchOptions & ConsumeCallback = {
          max_messages: asked,
          expires: 1_000,
          callback: (msg: JsMsg) => {
            asked--;
            this.#reserved--;
            if (this.#draining || this.#busy >= this.#o.slots) {
              // Draining, or an offer took the slot this pull was for: hand the message back.
              msg.nak();
              return;
            }
            this.#busy++;
            const task = decodeTaskSafe(msg);
            void this.#claimAndRun(task, msg, 'queue', undefined, msg.headers);
          },
        };
        const batch = await consumer.fetch(pull);
        // close() does not wait out the pull's expiry (drain does: a message the server is
        // already sending is then still taken or handed back, not left to its ack wait).
        const onClose = (): void => void batch.stop();
        this.#closing.signal.addEventListener('abort', onClose, { once: true });
        try {
          const err = await batch.closed();
          if (err) throw err;
        } finally {
          this.#closing.signal.removeEventListener('abort', onClose);
        }
      } catch (error) {
        if (!signal.aborted) {
          this.#o.onEvent({ type: 'error', where: 'pull', error });
          // The consumer may be gone (a fresh server): recreate it, then retry.
          consumer = undefined;
          await ensureTaskConsumer(this.#bus, platform, emulated).catch(() => undefined);
          await pause(250, signal);
        }
      } finally {
        this.#reserved -= asked;
        this.#pump();
      }
    }
  }

  // ---- offers ----

  #onOffer(msg: Msg): void {
    const reply = (r: OfferReply): void => {
      msg.respond(encodeJson(r));
    };
    const task = decodeTaskSafe(msg);
    if (!task) return reply({ accepted: false, reason: 'stale' });
    if (this.#draining) return this.#decline(task, reply, 'draining');
    if (!this.#supports(task)) return this.#decline(task, reply, 'platform');
    const waitMs = Number(msg.headers?.get(OFFER_WAIT_HEADER) || '0');
    const take = (): void => void this.#claimAndRun(task, undefined, 'offer', reply, msg.headers);
    if (this.#busy < this.#o.slots) {
      this.#busy++;
      take();
      return;
    }
    if (waitMs <= 0) return this.#decline(task, reply, 'busy');
    // Delay scheduling on our side: hold the offer until a slot frees or the wait is over.
    let granted = false;
    const w: SlotWaiter = {
      kind: 'offer',
      grant: () => {
        granted = true;
        clearTimeout(timer);
        if (this.#draining) {
          this.#releaseSlot();
          this.#decline(task, reply, 'draining');
        } else take();
      },
    };
    const timer = setTimeout(() => {
      if (granted) return;
      const i = this.#waiters.indexOf(w);
      if (i >= 0) this.#waiters.splice(i, 1);
      this.#decline(task, reply, 'busy');
    }, waitMs);
    this.#waiters.push(w);
  }

  #decline(
    task: Task,
    reply: (r: OfferReply) => void,
    reason: NonNullable<OfferReply['reason']>,
  ): void {
    this.#o.onEvent({ type: 'offer-declined', taskId: task.taskId, reason });
    reply({ accepted: false, reason });
  }

  #supports(task: Task): boolean {
    const want = platformFromPb(task.platform);
    return want !== undefined && this.#o.platforms.some((wp) => platformMatches(wp, want));
  }

  #emulatedFor(task: Task): boolean {
    const want = platformFromPb(task.platform);
    return !this.#o.platforms.some((wp) => !wp.emulated && platformMatches(wp, want));
  }

  // ---- running ----

  /** Holds one slot (already counted in #busy) for the whole claim-run-report cycle. */
  async #claimAndRun(
    task: Task | undefined,
    msg: JsMsg | undefined,
    via: 'offer' | 'queue',
    reply?: (r: OfferReply) => void,
    hdrs?: MsgHdrs,
  ): Promise<void> {
    let running: Running | undefined;
    let attempt: string | undefined;
    let settled: (() => void) | undefined;
    try {
      if (!task || !this.#supports(task)) {
        // Undecodable, or on a queue we should not consume: never run it; drop the copy.
        msg?.ack();
        reply?.({ accepted: false, reason: task ? 'platform' : 'stale' });
        return;
      }
      const first = this.#attempts.get(task.attemptToken);
      if (first) {
        // A copy of an attempt we are still claiming or running (redelivered after a claim slower
        // than the ack wait, published twice, offered and queued): the first copy settles the
        // attempt; this one is dropped once it has (the first copy's own message, if its claim
        // failed, stays unacked and comes back).
        reply?.({ accepted: false, reason: 'stale' });
        void first.then(() => msg?.ack());
        return;
      }
      attempt = task.attemptToken;
      let settle!: () => void;
      this.#attempts.set(attempt, new Promise<void>((r) => (settle = r)));
      settled = settle;
      const key = taskKey(task.cacheKey);
      // The scheduler checks the token and writes the claim (workers never write records).
      const claimed = await retrying(
        () => {
          msg?.working();
          return this.#records.request({
            op: 'claim',
            key,
            token: task.attemptToken,
            emulated: this.#emulatedFor(task),
          });
        },
        { timeoutMs: 30_000, retryable: transient },
      );
      if (!claimed) {
        this.#o.onEvent({
          type: 'stale',
          taskId: task.taskId,
          attempt: task.attempt,
          why: 'claim',
        });
        msg?.ack();
        reply?.({ accepted: false, reason: 'stale' });
        return;
      }
      reply?.({ accepted: true });
      this.#o.onEvent({
        type: 'claimed',
        taskId: task.taskId,
        cacheKey: task.cacheKey,
        attempt: task.attempt,
        via,
      });
      let finish!: () => void;
      running = {
        task,
        key,
        abort: new AbortController(),
        done: new Promise<void>((r) => (finish = r)),
        trace: hdrs ? propagation.extract(ROOT_CONTEXT, hdrs, headersGetter) : ROOT_CONTEXT,
      };
      this.#running.set(task.attemptToken, running);
      try {
        await this.#run(running, msg);
      } finally {
        finish();
      }
    } catch (error) {
      this.#o.onEvent({ type: 'error', where: 'task', error });
      reply?.({ accepted: false, reason: 'stale' });
    } finally {
      if (running) this.#running.delete(running.task.attemptToken);
      if (attempt) this.#attempts.delete(attempt);
      settled?.();
      this.#releaseSlot();
    }
  }

  async #run(r: Running, msg: JsMsg | undefined): Promise<void> {
    const { task, key } = r;
    const token = task.attemptToken;
    const keepalive = setInterval(() => {
      msg?.working();
      getRecord(this.#bus.tasks, key).then(
        (s) => {
          if (!s || !holds(s.record, token, { id: this.id, boot: this.boot })) {
            r.why ??= 'stale';
            r.abort.abort();
          }
        },
        // NATS away: keep running; the scheduler decides whether we are presumed dead.
        () => undefined,
      );
    }, this.#o.keepaliveMs);
    const started = Date.now();
    const span = tracer().startSpan(
      SpanName.task,
      {
        attributes: {
          [Attr.taskId]: task.taskId,
          [Attr.workerId]: this.id,
          [Attr.cacheKey]: task.cacheKey ?? '',
        },
      },
      r.trace,
    );
    let outcome: TaskOutcome;
    try {
      outcome = await context.with(trace.setSpan(r.trace, span), () =>
        this.#o.runTask(task, r.abort.signal, (p) => this.#progress(key, task, p)),
      );
    } catch (err) {
      outcome = { error: errorOf(err) };
    } finally {
      clearInterval(keepalive);
    }
    span.setAttribute(Attr.cacheHit, outcome.cached ?? false);
    if (outcome.error)
      span.setStatus({ code: SpanStatusCode.ERROR, message: outcome.error.message ?? '' });
    span.end();
    if (r.why === 'handback') {
      await retrying(() => this.#records.request({ op: 'release', key, token }), {
        timeoutMs: 10_000,
      });
      msg?.ack(); // the scheduler re-dispatches under a new token
      this.#o.onEvent({ type: 'handed-back', taskId: task.taskId, attempt: task.attempt });
      return;
    }
    if (r.why === 'stale') {
      msg?.ack();
      this.#o.onEvent({
        type: 'stale',
        taskId: task.taskId,
        attempt: task.attempt,
        why: 'keepalive',
      });
      return;
    }
    const result: TaskResultInit = {
      taskId: task.taskId,
      attemptToken: token,
      workerId: this.id,
      outputs: outcome.outputs ?? [],
      cached: outcome.cached ?? false,
      ...(outcome.inputs
        ? {
            inputsLocal: outcome.inputs.local,
            inputsFetched: outcome.inputs.fetched,
            bytesFetched: outcome.inputs.bytesFetched,
          }
        : {}),
      startedUnixNano: toLong(BigInt(started) * 1_000_000n),
      completedUnixNano: toLong(BigInt(Date.now()) * 1_000_000n),
      ...(outcome.error ? { error: outcome.error } : {}),
      ...(outcome.chain?.length ? { chain: outcome.chain } : {}),
    };
    const encoded = toBase64(encodeResult(result));
    const req: RecordRequest = outcome.error
      ? { op: 'error', key, token, error: taskErrorToRecord(outcome.error), result: encoded }
      : { op: 'complete', key, token, result: encoded };
    // No scheduler running: the result waits here until one answers (a new scheduler picks the
    // running record up and waits for it), up to reportTimeoutMs, or until close().
    const report = retrying(() => this.#records.request(req), {
      timeoutMs: this.#o.reportTimeoutMs,
      retryable: transient,
      signal: this.#closing.signal,
    });
    // The report's write is on the connection's buffer now: the ack joins it (one write, not a
    // second one after the reply). Acking before the report is stored loses nothing: since the
    // claim, the record (not the message) carries the attempt, and a holder that dies now is
    // re-dispatched by the scheduler; a redelivered copy could only be dropped as stale.
    msg?.ack();
    const applied = await report;
    if (!applied) {
      this.#o.onEvent({ type: 'stale', taskId: task.taskId, attempt: task.attempt, why: 'report' });
      return;
    }
    if (!outcome.error)
      this.addHeld(
        [outcome.outputs ?? [], ...(outcome.chain ?? []).map((s) => s.outputs ?? [])]
          .flat()
          .map((o) => o.resultId ?? '')
          .filter(Boolean),
      );
    this.#o.onEvent({
      type: 'completed',
      taskId: task.taskId,
      attempt: task.attempt,
      ok: !outcome.error,
    });
  }

  #progress(key: string, task: Task, p: ProgressUpdate): void {
    const ev: TaskProgress = {
      taskId: task.taskId,
      attemptToken: task.attemptToken,
      workerId: this.id,
      ...p,
      // One message of the bus holds them: a line without end (a RUN printing megabytes with no
      // newline) is cut, marked, rather than refused whole.
      ...(p.lines ? { lines: p.lines.map((l) => truncateMiddle(l, MAX_PROGRESS_LINE)) } : {}),
      at: Date.now(),
    };
    try {
      this.#nc.publish(progressSubject(key), encodeJson(ev));
    } catch (error) {
      this.#o.onEvent({ type: 'error', where: 'progress', error });
    }
  }
}

/** No scheduler answered (yet), or NATS is away; a refused request is final. */
function transient(err: unknown): boolean {
  return !(err instanceof KilnError) || err.retryable;
}

function decodeTaskSafe(msg: { data: Uint8Array }): Task | undefined {
  try {
    const t = decodeTask(msg.data);
    return t.cacheKey && t.attemptToken ? t : undefined;
  } catch {
    return undefined;
  }
}

/** A progress line's bound (a few of them fit one bus message). */
export const MAX_PROGRESS_LINE = 16 * 1024;
/** A task error's message bound: it travels in the task record, one bus message. */
export const MAX_TASK_ERROR_MESSAGE = 64 * 1024;

function errorOf(err: unknown): TaskErrorInit {
  const message = truncateMiddle(
    err instanceof Error ? err.message : String(err),
    MAX_TASK_ERROR_MESSAGE,
  );
  if (err instanceof KilnError) return { code: err.code, message, retryable: err.retryable };
  return { code: 'TASK_FAILED', message, retryable: true };
}
