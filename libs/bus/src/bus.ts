/**
 * Opening the task bus: the `KILN_TASKS` work-queue stream, the per-platform durable pull
 * consumers and the KV buckets (tasks, workers, cache mounts). Creation is idempotent and done by whichever side comes
 * first (scheduler or worker); an existing stream or bucket is used as it is.
 */
import type { ConsumerInfo, JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import {
  AckPolicy,
  DeliverPolicy,
  DiscardPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
} from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import { Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { nanos } from '@nats-io/transport-node';
import type { Platform } from '@kiln/protocol';
import { CACHE_MOUNTS_BUCKET } from './cache-mounts.js';
import {
  TASK_STREAM,
  TASKS_BUCKET,
  WORKERS_BUCKET,
  taskConsumerName,
  taskSubject,
} from './subjects.js';

export interface BusOptions {
  /**
   * How long task records (results included: the cache index) are kept after their last change.
   * Default 24 h. Applies when the bucket is created; with {@link applyRecordTtl} also to a bucket
   * that exists (the scheduler's `--cache-ttl`).
   */
  recordTtlMs?: number;
  /** Change an existing bucket's record lifetime to `recordTtlMs` (needs stream update rights). */
  applyRecordTtl?: boolean;
  /** Queue consumer ack wait; holders extend it with `working()`. Default 10 s. */
  ackWaitMs?: number;
  /**
   * Deliveries of one queue message before the server gives up (a safety net for messages whose
   * every holder died; the scheduler deletes such messages). Default 5.
   */
  maxDeliver?: number;
}

export interface CompiledBusOptions {
  recordTtlMs: number;
  ackWaitMs: number;
  maxDeliver: number;
}

export function compileBusOptions(o: BusOptions = {}): CompiledBusOptions {
  return {
    recordTtlMs: o.recordTtlMs ?? 24 * 3600_000,
    ackWaitMs: o.ackWaitMs ?? 10_000,
    maxDeliver: o.maxDeliver ?? 5,
  };
}

/** Handles to everything on the bus, for one connection. */
export interface Bus {
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  /** `kiln_tasks`: dedup and fencing records, key = {@link taskKey}(cache key). */
  readonly tasks: KV;
  /** `kiln_workers`: registrations, key = worker id. */
  readonly workers: KV;
  readonly options: CompiledBusOptions;
}

/** Creates (or opens) the stream and buckets. */
export async function openBus(nc: NatsConnection, opts: BusOptions = {}): Promise<Bus> {
  const options = compileBusOptions(opts);
  const jsm = await jetstreamManager(nc);
  const js = jetstream(nc);
  try {
    await jsm.streams.info(TASK_STREAM);
  } catch {
    try {
      await jsm.streams.add({
        name: TASK_STREAM,
        subjects: ['kiln.task.>'],
        retention: RetentionPolicy.Workqueue,
        storage: StorageType.File,
        discard: DiscardPolicy.Old,
        max_age: nanos(options.recordTtlMs),
      });
    } catch (err) {
      // Another process created it meanwhile: fine if it exists now.
      await jsm.streams.info(TASK_STREAM).catch(() => {
        throw err;
      });
    }
  }
  const kvm = new Kvm(js);
  const tasks = await kvm.create(TASKS_BUCKET, { history: 1, ttl: options.recordTtlMs });
  if (opts.applyRecordTtl) await applyMaxAge(jsm, `KV_${TASKS_BUCKET}`, options.recordTtlMs);
  const workers = await kvm.create(WORKERS_BUCKET, { history: 1 });
  // Made here so that it exists before a worker (which may not create buckets) needs it. A cache
  // mount's version lives as long as a record after its last write (its blob is marked by it).
  await kvm.create(CACHE_MOUNTS_BUCKET, { history: 1, ttl: options.recordTtlMs });
  if (opts.applyRecordTtl) await applyMaxAge(jsm, `KV_${CACHE_MOUNTS_BUCKET}`, options.recordTtlMs);
  return { nc, js, jsm, tasks, workers, options };
}

/** Creates (or finds) the durable pull consumer of a platform queue. */
export async function ensureTaskConsumer(
  bus: Bus,
  platform: Platform,
  emulated: boolean,
): Promise<ConsumerInfo> {
  const name = taskConsumerName(platform, emulated);
  try {
    return await bus.jsm.consumers.info(TASK_STREAM, name);
  } catch {
    try {
      return await bus.jsm.consumers.add(TASK_STREAM, {
        durable_name: name,
        filter_subject: taskSubject(platform, emulated),
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.All,
        ack_wait: nanos(bus.options.ackWaitMs),
        max_deliver: bus.options.maxDeliver,
        max_ack_pending: -1,
        max_waiting: 4096,
      });
    } catch (err) {
      return bus.jsm.consumers.info(TASK_STREAM, name).catch(() => {
        throw err;
      });
    }
  }
}

/** Sets a stream's max_age (records older than it expire) when it differs. */
async function applyMaxAge(jsm: JetStreamManager, stream: string, ms: number): Promise<void> {
  const info = await jsm.streams.info(stream);
  if (info.config.max_age === nanos(ms)) return;
  await jsm.streams.update(stream, { ...info.config, max_age: nanos(ms) });
}

/**
 * Whether the task queue still holds message `seq`: false when it is gone (acknowledged, deleted,
 * purged), undefined when the server could not say (NATS away).
 */
export async function queueMessageExists(bus: Bus, seq: number): Promise<boolean | undefined> {
  try {
    // nats.js answers null for a message that is not there (older versions threw 10037).
    return (await bus.jsm.streams.getMessage(TASK_STREAM, { seq })) !== null;
  } catch (err) {
    if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.NoMessageFound)
      return false;
    return undefined;
  }
}
