/**
 * Test support for the scheduler's suites (used by `*.test.ts` only; not built into dist): real
 * worker processes. The worker is another service: it is never imported, it is run. A task worker
 * with the sleep executor (`@kiln/testing`'s `task-worker-cli.ts`) or the worker's own entry
 * (`node/main.ts`, real runtime) is bundled once per run with esbuild from source, so no prior
 * build is needed.
 */
import { spawnManaged } from '@kiln/common';
import type { ManagedProcess } from '@kiln/common';
import { bundleEntries, waitFor } from '@kiln/testing';

/** Bundles the worker task CLI into `dir` and returns the file to run with node. */
export async function bundleWorkerCli(dir: string): Promise<string> {
  const files = await bundleEntries(
    { 'kiln-worker-cli': 'libs/testing/src/task-worker-cli.ts' },
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
  readonly proc: ManagedProcess;
  readonly events: WorkerEvent[];
  claimed(taskId: string): boolean;
}

export async function spawnWorker(
  cli: string,
  natsUrl: string,
  o: { id: string; platforms: string; slots?: number; env?: Record<string, string> },
): Promise<WorkerProcess> {
  const events: WorkerEvent[] = [];
  const proc = spawnManaged(process.execPath, [cli], {
    name: `worker ${o.id}`,
    env: {
      ...process.env,
      KILN_NATS_URL: natsUrl,
      KILN_WORKER_ID: o.id,
      KILN_WORKER_PLATFORMS: o.platforms,
      KILN_WORKER_SLOTS: String(o.slots ?? 1),
      KILN_WORKER_HEARTBEAT_MS: '250',
      KILN_WORKER_DRAIN_TIMEOUT_MS: '200',
      ...o.env,
    },
    onLine: (line, stream) => {
      if (stream !== 'stdout' || !line.startsWith('{')) return;
      events.push(JSON.parse(line) as WorkerEvent);
    },
  });
  await waitFor(`worker ${o.id} to register`, () => events.some((e) => e.type === 'registered'), {
    abort: () => (proc.hasExited() ? `worker ${o.id} exited:\n${proc.output()}` : undefined),
  });
  return {
    id: o.id,
    proc,
    events,
    claimed: (taskId) => events.some((e) => e.type === 'claimed' && e.taskId === taskId),
  };
}

/** Bundles the worker service's own entry (`node/main.ts`: real runtime, snapshots) into `dir`. */
export async function bundleWorkerMain(dir: string): Promise<string> {
  const files = await bundleEntries(
    { 'kiln-worker-main': 'services/worker/src/node/main.ts' },
    dir,
  );
  return files['kiln-worker-main']!;
}

/**
 * Runs the bundled worker entry as worker `id` (state in `stateDir`, the farm's store in
 * `storeDir`) and waits until `registered(id)` says the farm sees it; `env` adds to (and wins
 * over) the defaults: heartbeat 250 ms, log level warn.
 */
export async function spawnWorkerNode(
  main: string,
  natsUrl: string,
  o: {
    id: string;
    stateDir: string;
    storeDir: string;
    env?: Record<string, string>;
    registered: (id: string) => boolean;
  },
): Promise<ManagedProcess> {
  const p = spawnManaged(
    process.execPath,
    [main, '--id', o.id, '--state-dir', o.stateDir, '--store-dir', o.storeDir],
    {
      name: `worker ${o.id}`,
      env: {
        ...process.env,
        KILN_NATS_URL: natsUrl,
        KILN_WORKER_HEARTBEAT_MS: '250',
        KILN_LOG_LEVEL: 'warn',
        ...o.env,
      },
    },
  );
  await waitFor(`${o.id} to register`, () => {
    if (p.hasExited()) throw new Error(`${o.id} exited:\n${p.output()}`);
    return o.registered(o.id);
  });
  return p;
}
