/**
 * WorkerNode: the worker process of the farm. It opens the shared content store and the engine
 * (TaskRunner), connects to NATS and runs a TaskConsumer whose tasks are real LLB ops; the
 * registration advertises the results held here (affinity). Logs go to the given pino logger,
 * one child per task with its build, vertex and task ids.
 *
 * It also answers, for the results it holds, the scheduler's content checksum requests
 * (`checksum-responder.ts`, subject `kiln.checksum.<id>`) and requests to make a result's layers
 * blobs (`materialize-responder.ts`, `kiln.materialize.<id>`), from start until it stops, and
 * runs garbage collection of its local cache (`gc/`: in the background by the configured policy,
 * and on the control API's DiskUsage and Prune through `kiln.gc.<id>`).
 *
 * Lifecycle: `start()` -> running; `drain()` takes no new task, finishes (or hands back) the
 * running ones, deregisters and closes the connection; `close()` stops at once (as a crash would:
 * the scheduler re-dispatches the attempts once the heartbeat is missed).
 */
import { RecordClient, connectNats, workerInboxPrefix } from '@kiln/bus';
import type { NatsConnection } from '@nats-io/transport-node';
import { openStore } from '@kiln/store';
import type { BlobStore } from '@kiln/store';
import type { Logger } from 'pino';
import { TaskConsumer, defaultWorkerId } from '@kiln/bus';
import type { ConsumerEvent } from '@kiln/bus';
import { statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { GcResponder, WorkerGc, defaultKeepBytes } from '../gc/index.js';
import { KvFile } from '../cache/kv-file.js';
import { ChecksumResponder } from './checksum-responder.js';
import { MaterializeResponder } from './materialize-responder.js';
import { WriteBehind } from './write-behind.js';
import type { WorkerConfig } from './config.js';
import { TaskRunner } from './task-runner.js';
import { cleanupAfter } from '@kiln/protocol';

export interface WorkerNodeOptions {
  /** Default: silent. */
  logger?: Logger;
  /** The consumer's typed events (tests). */
  onEvent?: (e: ConsumerEvent) => void;
  /** The content store; default: the one the config names. */
  store?: BlobStore;
  /** Told of each background collection of the local cache that removed something. */
  onGcCollected?: (removedBytes: number) => void;
}

/** The names of the worker's readiness checks (`WorkerNode.readiness`). */
export const READINESS = ['nats', 'registered', 'runtime'] as const;

export class WorkerNode {
  #diskTimer: NodeJS.Timeout | undefined;
  #natsUp = true;
  #draining = false;
  /** Answers the scheduler's content checksum requests (`kiln.checksum.<id>`) once started. */
  #checksums: ChecksumResponder | undefined;
  /** Makes held results blobs on request (`kiln.materialize.<id>`) once started. */
  #materialize: MaterializeResponder | undefined;
  /** Uploads held results in the background while no task runs. */
  #writeBehind: WriteBehind | undefined;
  /** Garbage collection of the local cache. */
  #gc: WorkerGc | undefined;
  #gcResponder: GcResponder | undefined;

  private constructor(
    readonly config: WorkerConfig,
    readonly runner: TaskRunner,
    readonly consumer: TaskConsumer,
    private readonly nc: NatsConnection,
    private readonly log: Logger | undefined,
    private readonly disk: { free: number },
  ) {}

  get id(): string {
    return this.consumer.id;
  }

  /** Tasks running now (busy slots). */
  get runningTasks(): number {
    return this.consumer.runningCount;
  }

  /** Free bytes on the state dir's filesystem, as last measured. */
  get freeDiskBytes(): number {
    return this.disk.free;
  }

  static async start(config: WorkerConfig, o: WorkerNodeOptions = {}): Promise<WorkerNode> {
    const log = o.logger;
    const store = o.store ?? (await openStore(config.store));
    // Replies to this worker's requests come to its own inbox: its NATS permissions allow no other.
    const id = config.id ?? defaultWorkerId();
    const nc = await connectNats(config.natsUrl, {
      ...config.natsAuth,
      inboxPrefix: workerInboxPrefix(id),
    });
    let runner: TaskRunner;
    try {
      runner = await TaskRunner.open({
        stateDir: config.stateDir,
        store,
        nc,
        workerId: id,
        localDirs: config.localDirs,
        snapshotter: config.snapshotter,
        runtime: config.runtime,
        limits: config.limits,
        unpack: config.unpack,
        sandboxDeny: [...config.sandboxDeny, ...natsHosts(config.natsUrl)],
        ...(config.cgroupRoot ? { cgroupRoot: config.cgroupRoot } : {}),
        cacheMountLeaseMs: config.cacheMountLeaseMs,
        cacheMountPendingWaitMs: config.cacheMountWaitMs,
        registry: {
          insecureRegistries: config.insecureRegistries,
          // The worker's own docker config serves builds only when the farm says so.
          ...(config.farmRegistryCredentials ? {} : { dockerConfig: false }),
        },
        ...(log ? { logger: log.child({ component: 'runner' }) } : {}),
      });
    } catch (err) {
      return cleanupAfter(err, () => nc.close());
    }
    const disk = { free: 0 };
    const writeBehind = new WriteBehind({
      records: new RecordClient(nc, id),
      materialize: (rid, wo) => runner.materializeResult(rid, wo),
      idleMs: config.writeBehindIdleMs,
      onError: (err, resultId) => log?.warn({ err, resultId }, 'write-behind failed'),
      onUploaded: (resultId, records) => log?.debug({ resultId, records }, 'result uploaded'),
    });
    let running = 0;
    const consumer = new TaskConsumer({
      nc,
      id,
      platforms: config.platforms,
      labels: config.labels,
      slots: config.slots,
      runTask: async (task, signal, progress) => {
        writeBehind.taskStarted();
        running++;
        let outcome: Awaited<ReturnType<typeof runner.run>> | undefined;
        try {
          return (outcome = await runner.run(task, signal, progress));
        } finally {
          running--;
          writeBehind.taskEnded(task.cacheKey ?? '', outcome?.outputs ?? []);
        }
      },
      heartbeatMs: config.heartbeatMs,
      drainTimeoutMs: config.drainTimeoutMs,
      freeDiskBytes: () => disk.free,
      heldResults: () => runner.heldResults(),
      onEvent: (e) => {
        logEvent(log, e);
        o.onEvent?.(e);
      },
    });
    const node = new WorkerNode(config, runner, consumer, nc, log, disk);
    node.#writeBehind = writeBehind;
    await node.#refreshDisk();
    // statfs is async and the registration is built synchronously: refresh it on the side.
    node.#diskTimer = setInterval(() => void node.#refreshDisk(), 10_000);
    node.#diskTimer.unref();
    try {
      await consumer.start();
    } catch (err) {
      await node.#stop();
      throw err;
    }
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === 'disconnect') node.#natsUp = false;
        else if (s.type === 'reconnect') node.#natsUp = true;
      }
    })();
    node.#checksums = new ChecksumResponder({
      nc,
      workerId: consumer.id,
      held: {
        snapshotOf: (id) => runner.snapshotOf(id),
        read: (snap, fn) => runner.engine.read(snap, fn),
        fileDigests: (snap) => runner.contexts.fileDigests(snap),
        manifest: (snap) => runner.contexts.manifestEntries(snap),
      },
      persist: await KvFile.open(join(config.stateDir, 'node', 'held-checksums.jsonl')),
      onError: (err) => log?.debug({ err }, 'checksum reply failed'),
    });
    node.#checksums.start();
    node.#materialize = new MaterializeResponder({
      nc,
      workerId: consumer.id,
      materialize: async (id) => (await runner.materializeResult(id)) ?? [],
      onError: (err, resultId) => log?.warn({ err, resultId }, 'materialize failed'),
    });
    node.#materialize.start();
    const gcLog = log?.child({ component: 'gc' });
    const fs = await statfs(config.stateDir);
    node.#gc = new WorkerGc({
      snapshotter: runner.engine.snapshotter,
      held: runner.held,
      layers: runner.engine.layers,
      usage: runner.usage,
      cacheMounts: runner.localCacheMounts,
      config: {
        ...config.gc,
        keepBytes: config.gc.keepBytes ?? defaultKeepBytes(fs.blocks * fs.bsize),
      },
      freeBytes: () => runner.freeDiskBytes(),
      idle: () => running === 0,
      runningSince: () => runner.runningSince(),
      onCollected: (removed, totalBefore) => {
        o.onGcCollected?.(removed.reduce((n, r) => n + r.size, 0));
        gcLog?.info(
          {
            removed: removed.length,
            freedBytes: removed.reduce((n, r) => n + r.size, 0),
            totalBefore,
          },
          'cache collected',
        );
      },
      onError: (err) => gcLog?.warn({ err }, 'gc failed'),
    });
    node.#gc.start();
    node.#gcResponder = new GcResponder({
      nc,
      workerId: consumer.id,
      gc: node.#gc,
      onError: (err) => gcLog?.debug({ err }, 'gc request failed'),
    });
    node.#gcResponder.start();
    log?.info(
      {
        workerId: consumer.id,
        platforms: config.platforms,
        slots: config.slots,
        store: config.store.type,
        stateDir: config.stateDir,
        gc: node.#gc.config,
      },
      'worker started',
    );
    return node;
  }

  async #refreshDisk(): Promise<void> {
    this.disk.free = await this.runner.freeDiskBytes();
  }

  /**
   * Readiness checks (the `/readyz` of `--health-listen`): connected to NATS, registered and not
   * draining, and the OCI runtime opens.
   */
  readiness(): Record<(typeof READINESS)[number], () => boolean | Promise<boolean>> {
    return {
      nats: () => this.#natsUp && !this.nc.isClosed(),
      registered: () => !this.#draining,
      runtime: () => this.runner.runtimeUsable(),
    };
  }

  /** Graceful stop: no new task, running ones finish or are handed back; then disconnects. */
  async drain(timeoutMs?: number): Promise<void> {
    this.#draining = true;
    this.log?.info({ workerId: this.id }, 'worker draining');
    await this.consumer.drain(timeoutMs);
    // What only this worker holds would be lost with it: upload it first.
    await this.#writeBehind?.flush(timeoutMs ?? this.config.drainTimeoutMs);
    // Cache mount versions written by the last runs, for the next worker to find.
    await this.runner.cacheMounts.flush?.();
    await this.#stop();
    this.log?.info({ workerId: this.id }, 'worker stopped');
  }

  /** Stops at once without handing anything back (a crash looks the same to the farm). */
  async close(): Promise<void> {
    await this.consumer.close();
    await this.#stop();
  }

  /** Write-behind of held results (undefined before `start` finished). */
  get writeBehind(): WriteBehind | undefined {
    return this.#writeBehind;
  }

  /** The materialize responder (undefined before `start` finished). */
  get materializer(): MaterializeResponder | undefined {
    return this.#materialize;
  }

  /** Garbage collection of the local cache (undefined before `start` finished). */
  get gc(): WorkerGc | undefined {
    return this.#gc;
  }

  /** The content checksum responder (undefined before `start` finished). */
  get checksums(): ChecksumResponder | undefined {
    return this.#checksums;
  }

  async #stop(): Promise<void> {
    clearInterval(this.#diskTimer);
    await this.#writeBehind?.stop();
    await this.#checksums?.stop();
    await this.#materialize?.stop();
    await this.#gcResponder?.stop();
    await this.#gc?.stop();
    // The sandbox network's pooled namespaces and veths would outlive the process otherwise.
    await this.runner.engine.close();
    await this.runner.close();
    if (!this.nc.isClosed()) await this.nc.close();
  }
}

/** Consumer events as log lines: short constant messages, data in fields. */
function logEvent(log: Logger | undefined, e: ConsumerEvent): void {
  if (!log) return;
  switch (e.type) {
    case 'error':
      log.warn({ where: e.where, err: e.error }, 'consumer error');
      return;
    case 'claimed':
      log.info(
        { taskId: e.taskId, cacheKey: e.cacheKey, attempt: e.attempt, via: e.via },
        'task claimed',
      );
      return;
    case 'completed':
      log.info({ taskId: e.taskId, attempt: e.attempt, ok: e.ok }, 'task reported');
      return;
    case 'stale':
      log.info({ taskId: e.taskId, attempt: e.attempt, why: e.why }, 'task stale');
      return;
    case 'offer-declined':
      log.debug({ taskId: e.taskId, reason: e.reason }, 'offer declined');
      return;
    case 'handed-back':
      log.info({ taskId: e.taskId, attempt: e.attempt }, 'task handed back');
      return;
    case 'registered':
      log.info({ workerId: e.workerId }, 'worker registered');
      return;
    case 'drained':
      log.info({ workerId: e.workerId }, 'worker drained');
      return;
  }
}

/** The hosts of a NATS url (`nats://a:4222,tls://b`): the farm's control plane, for the sandbox. */
export function natsHosts(url: string): string[] {
  const hosts: string[] = [];
  for (const part of url.split(',')) {
    const u = part.trim();
    if (u === '') continue;
    try {
      const host = new URL(u.includes('://') ? u : `nats://${u}`).hostname;
      if (host !== '') hosts.push(host.replace(/^\[(.*)\]$/, '$1'));
    } catch {
      // not a URL: the connection fails with its own error
    }
  }
  return hosts;
}
