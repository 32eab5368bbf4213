/**
 * Test support for the task consumer (used by `*.test.ts` only): the repository's test harness,
 * loaded at run time so that this package's build does not depend on the test package, and
 * scheduler-less task submission through the bus primitives.
 */
import { randomUUID } from 'node:crypto';
import type { Bus, TaskInit, TaskRecord } from '@kiln/bus';
import {
  createRecord,
  encodeTask,
  getRecord,
  redispatchRule,
  taskKey,
  taskSubject,
  toBase64,
} from '@kiln/bus';
import { formatPlatform, parsePlatform, platformFromPb, platformToPb } from '@kiln/protocol';

export interface NatsHandle {
  readonly url: string;
  readonly port: number;
  readonly storeDir: string;
  stop(): Promise<void>;
}

export interface ManagedProcessLike {
  readonly pid: number;
  readonly exited: Promise<{ code: number | null; signal: string | null }>;
  hasExited(): boolean;
  output(): string;
  kill(signal?: NodeJS.Signals): void;
  stop(timeoutMs?: number): Promise<unknown>;
}

/** The subset of `@kiln/test`'s harness these suites use. */
export interface Harness {
  startNats(o?: { port?: number; storeDir?: string }): Promise<NatsHandle>;
  makeTempDir(prefix: string): { dir: string; remove: () => void };
  spawnManaged(
    cmd: string,
    args: readonly string[],
    o?: {
      name?: string;
      env?: NodeJS.ProcessEnv;
      onLine?: (line: string, stream: 'stdout' | 'stderr') => void;
    },
  ): ManagedProcessLike;
  REPO_ROOT: string;
}

const HARNESS_MODULE = '../../../../test/src/harness/index.js';

export async function loadHarness(): Promise<Harness> {
  return (await import(/* @vite-ignore */ HARNESS_MODULE)) as Harness;
}

/** Polls `check` until it is truthy; fails with `what` after `timeoutMs`. */
export async function until<T>(
  what: string,
  check: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 15_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export function testTask(
  o: {
    platform?: string;
    sleepMs?: number;
    fail?: string;
    cacheKey?: string;
    output?: string;
  } = {},
): TaskInit {
  const description: Record<string, string> = {};
  if (o.sleepMs) description['kiln.test.sleep-ms'] = String(o.sleepMs);
  if (o.fail) description['kiln.test.fail'] = o.fail;
  if (o.output) description['kiln.test.output'] = o.output;
  return {
    taskId: randomUUID(),
    buildId: 'b1',
    cacheKey: o.cacheKey ?? `sha256:${randomUUID().replace(/-/g, '')}`,
    platform: platformToPb(parsePlatform(o.platform ?? 'linux/amd64')),
    metadata: { description },
  };
}

/**
 * What the scheduler does for a first dispatch, minus placement: the record, then the queue
 * message (`offer: true`: the record only, as for an attempt offered to a worker).
 */
export async function enqueueRaw(
  bus: Bus,
  task: TaskInit,
  o: { offer?: boolean } = {},
): Promise<TaskRecord> {
  const platform = platformFromPb(task.platform);
  if (platform === undefined) throw new Error('a test task needs a platform');
  const now = Date.now();
  const rec = redispatchRule(
    {
      v: 1,
      taskId: task.taskId ?? '',
      cacheKey: task.cacheKey ?? '',
      platform: formatPlatform(platform),
      attempt: 0,
      attemptToken: '',
      state: 'queued',
      builds: [task.buildId ?? ''],
      task: toBase64(encodeTask(task)),
      createdAt: now,
      dispatchedAt: now,
    },
    o.offer ? 'offer' : 'native',
    undefined,
  );
  const rev = await createRecord(bus.tasks, taskKey(task.cacheKey ?? ''), rec);
  if (rev === false) throw new Error('key exists');
  if (o.offer) return rec;
  await bus.js.publish(
    taskSubject(platform),
    encodeTask({ ...task, attemptToken: rec.attemptToken, attempt: rec.attempt }),
  );
  return rec;
}

export async function recordOf(bus: Bus, cacheKey: string): Promise<TaskRecord | undefined> {
  return (await getRecord(bus.tasks, taskKey(cacheKey)))?.record;
}
