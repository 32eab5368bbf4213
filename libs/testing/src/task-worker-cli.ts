/**
 * `libs/testing/src/task-worker-cli.ts` (bundled by the dispatch suites): a worker process that consumes tasks with the sleep
 * executor (the op executors plug in here once they exist), printing one JSON line per event.
 * SIGTERM drains: no new task, running ones finish (or are handed back), then exit 0.
 *
 * Environment (read only here): KILN_NATS_URL, KILN_WORKER_ID, KILN_WORKER_PLATFORMS
 * (`linux/amd64,linux/arm64=emulated`), KILN_WORKER_SLOTS, KILN_WORKER_HEARTBEAT_MS,
 * KILN_WORKER_DRAIN_TIMEOUT_MS, and the NATS credentials (`KILN_NATS_USER`... as the worker's).
 */
import { parsePlatform } from '@kiln/protocol';
import type { WorkerPlatform } from '@kiln/bus';
import {
  TaskConsumer,
  checkNatsAuth,
  connectNats,
  defaultWorkerId,
  natsAuthFrom,
  workerInboxPrefix,
} from '@kiln/bus';
import { sleepExecutor } from './sleep-executor.js';

export function parseWorkerPlatforms(s: string): WorkerPlatform[] {
  return s
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean)
    .map((x) => {
      const [p = '', mode] = x.split('=');
      return { ...parsePlatform(p), emulated: mode === 'emulated' };
    });
}

async function main(): Promise<void> {
  const env = process.env;
  const id = env.KILN_WORKER_ID || defaultWorkerId();
  const nc = await connectNats(env.KILN_NATS_URL ?? 'nats://127.0.0.1:4222', {
    ...checkNatsAuth(natsAuthFrom({}, env)),
    inboxPrefix: workerInboxPrefix(id),
  });
  const consumer = new TaskConsumer({
    nc,
    id,
    platforms: parseWorkerPlatforms(env.KILN_WORKER_PLATFORMS ?? 'linux/amd64'),
    slots: Number(env.KILN_WORKER_SLOTS ?? '1'),
    heartbeatMs: env.KILN_WORKER_HEARTBEAT_MS ? Number(env.KILN_WORKER_HEARTBEAT_MS) : undefined,
    drainTimeoutMs: env.KILN_WORKER_DRAIN_TIMEOUT_MS
      ? Number(env.KILN_WORKER_DRAIN_TIMEOUT_MS)
      : undefined,
    runTask: sleepExecutor,
    onEvent: (e) => {
      const line = e.type === 'error' ? { ...e, error: String(e.error) } : e;
      process.stdout.write(`${JSON.stringify(line)}\n`);
    },
  });
  let stopping = false;
  process.on('SIGTERM', () => {
    if (stopping) return;
    stopping = true;
    void consumer
      .drain()
      .then(() => nc.close())
      .then(() => process.exit(0));
  });
  await consumer.start();
}

await main();
