/**
 * A build farm of real processes for the chaos suites: the scheduler service entry
 * (`services/scheduler/src/main.ts`) and the worker service entry
 * (`services/worker/src/node/main.ts`), each bundled once from source with esbuild (vitest's own
 * dependency, as the scheduler's suites do) so that no prior build is needed and the processes
 * run the code under test. Their pino JSON lines are kept for the tests to wait on. Everything is
 * reached the way a user reaches it: the control API through `@kiln/client`.
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import type { KilnClient, StatusResponse } from '@kiln/client';
import { bundleEntries as bundleFromSource, spawnManaged, waitFor } from '../harness/index.js';
import type { ManagedProcess } from '../harness/index.js';

export interface Entries {
  scheduler: string;
  worker: string;
}

/** Bundles the scheduler and worker service entries into `dir` (one esbuild run for both). */
export async function bundleEntries(dir: string): Promise<Entries> {
  const files = await bundleFromSource(
    {
      'kiln-scheduler': 'services/scheduler/src/main.ts',
      'kiln-worker': 'services/worker/src/node/main.ts',
    },
    dir,
  );
  return { scheduler: files['kiln-scheduler']!, worker: files['kiln-worker']! };
}

export interface LogLine {
  msg?: string;
  [k: string]: unknown;
}

export interface Service {
  readonly proc: ManagedProcess;
  /** The process's JSON log lines so far. */
  readonly lines: LogLine[];
}

function spawnService(
  name: string,
  file: string,
  args: string[],
  env: Record<string, string>,
): Service {
  const lines: LogLine[] = [];
  const proc = spawnManaged(process.execPath, [file, ...args], {
    name,
    env: { ...process.env, ...env },
    onLine: (line, stream) => {
      if (stream !== 'stdout' || !line.startsWith('{')) return;
      try {
        lines.push(JSON.parse(line) as LogLine);
      } catch {
        // a partial or foreign line: not ours to parse
      }
    },
  });
  return { proc, lines };
}

export interface SchedulerProcess extends Service {
  readonly port: number;
  readonly addr: string;
}

/** Dispatcher timings for the chaos suites: a dead worker is noticed after 1.5 s. */
export const SCHEDULER_ENV: Record<string, string> = {
  KILN_HEARTBEAT_TIMEOUT_MS: '1500',
  KILN_AFFINITY_DELAY_MS: '100',
  KILN_LOG_LEVEL: 'info',
};

/** Starts the scheduler on `port` (default: any) and waits until its control API listens. */
export async function startScheduler(
  entries: Entries,
  natsUrl: string,
  o: { port?: number; env?: Record<string, string> } = {},
): Promise<SchedulerProcess> {
  const s = spawnService('scheduler', entries.scheduler, [], {
    ...SCHEDULER_ENV,
    KILN_NATS_URL: natsUrl,
    KILN_SCHEDULER_LISTEN: `127.0.0.1:${o.port ?? 0}`,
    ...o.env,
  });
  const listening = await waitFor(
    'the scheduler to listen',
    () => s.lines.find((l) => l.msg === 'control api listening'),
    { abort: () => (s.proc.hasExited() ? `scheduler exited:\n${s.proc.output()}` : undefined) },
  );
  const port = Number(listening.port);
  return { ...s, port, addr: `127.0.0.1:${port}` };
}

export interface WorkerProcess extends Service {
  readonly id: string;
  readonly stateDir: string;
  /** `task claimed` lines whose task this process has not reported (yet). */
  inFlight(): LogLine[];
  /** Every `task claimed` line. */
  claims(): LogLine[];
}

export interface WorkerSpec {
  id: string;
  stateDir: string;
  storeDir: string;
  /** Extra flags (`--platform linux/arm64=emulated`, `--slots 2`...). */
  args?: string[];
  /** Extra environment (the worker's NATS credentials: `natsAuthEnv`). */
  env?: Record<string, string>;
}

/** Starts a worker process and waits until it has registered. */
export async function startWorker(
  entries: Entries,
  natsUrl: string,
  spec: WorkerSpec,
): Promise<WorkerProcess> {
  const s = spawnService(
    `worker ${spec.id}`,
    entries.worker,
    [
      '--id',
      spec.id,
      '--state-dir',
      spec.stateDir,
      '--store-dir',
      spec.storeDir,
      ...(spec.args ?? []),
    ],
    {
      KILN_NATS_URL: natsUrl,
      KILN_WORKER_HEARTBEAT_MS: '250',
      KILN_WORKER_DRAIN_TIMEOUT_MS: '5000',
      KILN_LOG_LEVEL: 'info',
      ...spec.env,
    },
  );
  await waitFor(
    `worker ${spec.id} to register`,
    () => s.lines.some((l) => l.msg === 'worker registered'),
    {
      abort: () =>
        s.proc.hasExited() ? `worker ${spec.id} exited:\n${s.proc.output()}` : undefined,
    },
  );
  const claims = () => s.lines.filter((l) => l.msg === 'task claimed');
  return {
    ...s,
    id: spec.id,
    stateDir: spec.stateDir,
    claims,
    inFlight: () =>
      claims().filter(
        (c) => !s.lines.some((l) => l.msg === 'task reported' && l.taskId === c.taskId),
      ),
  };
}

/** Waits until the scheduler behind `client` lists every worker of `ids` (ListWorkers). */
export async function waitForWorkers(client: KilnClient, ids: readonly string[]): Promise<void> {
  await waitFor(`the scheduler to list ${ids.join(', ')}`, async () => {
    const listed = new Set((await client.listWorkers()).map((w) => w.id));
    return ids.every((id) => listed.has(id));
  });
}

/** A vertex as the last status frame showed it. */
export interface VertexView {
  digest: string;
  name: string;
  cached: boolean;
  error: string;
  workerId: string;
  started: boolean;
  completed: boolean;
}

/** A build's status frames, read in the background from before the Solve until the build ends. */
export class StatusLog {
  readonly frames: StatusResponse[] = [];
  readonly done: Promise<unknown>;
  readonly #ac = new AbortController();

  constructor(client: KilnClient, buildId: string) {
    this.done = (async () => {
      for await (const f of client.status(buildId, 0, { signal: this.#ac.signal }))
        this.frames.push(f);
    })().catch((e: unknown) => e);
  }

  /** Every log line (text) of `vertex` (any vertex when omitted). */
  logs(vertex?: string): string[] {
    return this.frames.flatMap((f) =>
      f.logs
        .filter((l) => vertex === undefined || l.vertex === vertex)
        .map((l) => Buffer.from(l.msg ?? []).toString('utf8')),
    );
  }

  /** Waits until a log line of the build contains `text`. */
  async waitForLog(text: string, timeoutMs = 30_000): Promise<void> {
    await waitFor(
      `a log line with ${JSON.stringify(text)}`,
      () => this.logs().some((l) => l.includes(text)),
      { timeoutMs },
    );
  }

  /** The last snapshot of each vertex, by digest. */
  vertices(): Map<string, VertexView> {
    const m = new Map<string, VertexView>();
    for (const f of this.frames)
      for (const v of f.vertexes) {
        const digest = v.digest ?? '';
        m.set(digest, {
          digest,
          name: v.name ?? '',
          cached: v.cached ?? false,
          error: v.error ?? '',
          workerId: v.workerId ?? '',
          started: String(v.startedUnixNano ?? 0) !== '0',
          completed: String(v.completedUnixNano ?? 0) !== '0',
        });
      }
    return m;
  }

  stop(): void {
    this.#ac.abort();
  }
}

export interface Layer {
  digest: string;
  diffId: string;
  size: number;
  mediaType: string;
}

export const layersOf = (r: Record<string, string>): Layer[] =>
  JSON.parse(r['result.layers'] ?? '[]') as Layer[];

/**
 * The content of `path` in the filesystem a result's layers make (read from the filesystem
 * store's blobs with GNU tar, topmost layer first; whiteouts are not interpreted: the tests read
 * files that no later layer deletes). Undefined when no layer has it.
 */
export function readResultFile(
  storeDir: string,
  layers: readonly Layer[],
  path: string,
): string | undefined {
  const want = path.replace(/^\/+/, '');
  for (const l of [...layers].reverse()) {
    const blob = join(storeDir, 'blobs', 'sha256', l.digest.replace(/^sha256:/, ''));
    const names = execFileSync('tar', ['-tf', blob], { encoding: 'utf8' }).split('\n');
    const name = names.find((n) => n.replace(/^\.?\/+/, '') === want);
    if (name !== undefined) return execFileSync('tar', ['-xOf', blob, name], { encoding: 'utf8' });
  }
  return undefined;
}

/** `tar -tv` of a layer in the filesystem store (full times, numeric owners): what a diff shows. */
export function layerListing(storeDir: string, layer: Layer): string[] {
  const blob = join(storeDir, 'blobs', 'sha256', layer.digest.replace(/^sha256:/, ''));
  return execFileSync('tar', ['--full-time', '--numeric-owner', '-tvf', blob], {
    encoding: 'utf8',
  })
    .split('\n')
    .filter(Boolean);
}

/** A unique id for build ids and markers. */
export const uid = (): string => randomUUID().slice(0, 8);
