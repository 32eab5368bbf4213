/**
 * Test support for the dispatch suites (used by `*.test.ts` only): the repository's test harness,
 * loaded at run time so that this package's build does not depend on the test package, and real
 * worker processes. The worker is another service: it is never imported, it is run. Its task
 * CLI (`services/worker/src/tasks/cli.ts`, sleep executor) is bundled once per run with esbuild
 * (vitest's own dependency) from source, so no prior build is needed.
 */
import { randomUUID } from 'node:crypto';
import type { TaskInit } from '@kiln/bus';
import { parsePlatform, platformToPb } from '@kiln/protocol';

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
  bundleEntries(
    entries: Readonly<Record<string, string>>,
    dir: string,
  ): Promise<Record<string, string>>;
}

const HARNESS_MODULE = '../../../../test/src/harness/index.js';

export async function loadHarness(): Promise<Harness> {
  return (await import(/* @vite-ignore */ HARNESS_MODULE)) as Harness;
}

/** Polls `check` until it is truthy; fails with `what` after `timeoutMs`. */
export async function until<T>(
  what: string,
  check: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 20_000,
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

/** Bundles the worker task CLI into `dir` and returns the file to run with node. */
export async function bundleWorkerCli(h: Harness, dir: string): Promise<string> {
  const files = await h.bundleEntries(
    { 'kiln-worker-cli': 'services/worker/src/tasks/cli.ts' },
    dir,
  );
  return files['kiln-worker-cli']!;
}

export interface WorkerEvent {
  type: string;
  taskId?: string;
  why?: string;
  attempt?: number;
  via?: string;
  reason?: string;
}

export interface WorkerProcess {
  readonly id: string;
  readonly proc: ManagedProcessLike;
  readonly events: WorkerEvent[];
  claimed(taskId: string): boolean;
}

export async function spawnWorker(
  h: Harness,
  cli: string,
  natsUrl: string,
  o: { id: string; platforms: string; slots?: number },
): Promise<WorkerProcess> {
  const events: WorkerEvent[] = [];
  const proc = h.spawnManaged(process.execPath, [cli], {
    name: `worker ${o.id}`,
    env: {
      ...process.env,
      KILN_NATS_URL: natsUrl,
      KILN_WORKER_ID: o.id,
      KILN_WORKER_PLATFORMS: o.platforms,
      KILN_WORKER_SLOTS: String(o.slots ?? 1),
      KILN_WORKER_HEARTBEAT_MS: '250',
      KILN_WORKER_DRAIN_TIMEOUT_MS: '200',
    },
    onLine: (line, stream) => {
      if (stream !== 'stdout' || !line.startsWith('{')) return;
      events.push(JSON.parse(line) as WorkerEvent);
    },
  });
  await until(`worker ${o.id} to register`, () => {
    if (proc.hasExited()) throw new Error(`worker ${o.id} exited:\n${proc.output()}`);
    return events.some((e) => e.type === 'registered');
  });
  return {
    id: o.id,
    proc,
    events,
    claimed: (taskId) => events.some((e) => e.type === 'claimed' && e.taskId === taskId),
  };
}

export function testTask(
  o: {
    platform?: string;
    sleepMs?: number;
    fail?: string;
    cacheKey?: string;
    output?: string;
    /** The result has a layer with no blob (see the sleep executor). */
    lazy?: boolean;
    inputs?: string[];
  } = {},
): TaskInit {
  const description: Record<string, string> = {};
  if (o.sleepMs) description['kiln.test.sleep-ms'] = String(o.sleepMs);
  if (o.fail) description['kiln.test.fail'] = o.fail;
  if (o.output) description['kiln.test.output'] = o.output;
  if (o.lazy) description['kiln.test.lazy'] = '1';
  return {
    taskId: randomUUID(),
    buildId: 'b1',
    vertexDigest: `sha256:${randomUUID().replace(/-/g, '')}`,
    cacheKey: o.cacheKey ?? `sha256:${randomUUID().replace(/-/g, '')}`,
    platform: platformToPb(parsePlatform(o.platform ?? 'linux/amd64')),
    metadata: { description },
    inputs: (o.inputs ?? []).map((resultId) => ({ resultId })),
  };
}
