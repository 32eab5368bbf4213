/**
 * A farm for the user-namespace suites: nats-server, a scheduler and the global S3 store (under a
 * prefix of its own: a rootless worker cannot share a root worker's filesystem store), and worker
 * entries started as root, as root with `--userns-remap`, or (through setpriv) as the unprivileged
 * user `kiln` that scripts/setup.sh makes with subordinate ids in /etc/subuid and /etc/subgid.
 */
import { execFile } from 'node:child_process';
import { chmod, chown, mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { bundleEntries, startScheduler } from '../chaos/farm.js';
import type { Entries } from '../chaos/farm.js';
import { makeTempDir, spawnManaged, startNats, waitFor } from '../harness/index.js';
import type { ManagedProcess, NatsServerHandle } from '../harness/index.js';

const run = promisify(execFile);

export interface UsernsWorker {
  proc: ManagedProcess;
  stateDir: string;
  /** `task claimed` lines logged so far (counted as they come: the kept output is bounded). */
  claims(): number;
  output(): string;
}

export interface UsernsFarm {
  dir: string;
  entries: Entries;
  nats: NatsServerHandle;
  scheduler: { proc: ManagedProcess; addr: string };
  kilnUid: number;
  /** Starts the worker entry, as root or (through setpriv) as `user`; resolves once registered. */
  startWorker(
    id: string,
    o?: { user?: string; args?: string[]; env?: Record<string, string> },
  ): Promise<UsernsWorker>;
  stop(): Promise<void>;
}

/** The first id of kiln's range in /etc/subuid or /etc/subgid. */
export async function firstSubordinate(file: string): Promise<number> {
  const m = /^kiln:(\d+):/m.exec(await readFile(file, 'utf8'));
  if (m === null) throw new Error(`kiln has no range in ${file}: run scripts/setup.sh`);
  return Number(m[1]);
}

export async function startUsernsFarm(name: string): Promise<UsernsFarm> {
  const kilnUid = Number((await run('id', ['-u', 'kiln'])).stdout.trim());
  const tmp = makeTempDir(name);
  // The unprivileged user reads the bundled entry and writes its own state dir and home.
  await chmod(tmp.dir, 0o755);
  const entries = await bundleEntries(join(tmp.dir, 'bundle'));
  await mkdir(join(tmp.dir, 'home'));
  await chown(join(tmp.dir, 'home'), kilnUid, kilnUid);
  const s3Env: Record<string, string> = {
    KILN_S3_ENDPOINT: process.env.KILN_TEST_S3_ENDPOINT ?? '',
    KILN_S3_BUCKET: process.env.KILN_TEST_S3_BUCKET ?? '',
    KILN_S3_ACCESS_KEY: process.env.KILN_TEST_S3_ACCESS_KEY ?? '',
    KILN_S3_SECRET_KEY: process.env.KILN_TEST_S3_SECRET_KEY ?? '',
    KILN_S3_PREFIX: `${name}-${process.pid}/`,
  };
  const nats = await startNats();
  const scheduler = await startScheduler(entries, nats.url, { env: s3Env });
  const workers: ManagedProcess[] = [];

  const startWorker: UsernsFarm['startWorker'] = async (id, o = {}) => {
    const stateDir = join(tmp.dir, id);
    await mkdir(stateDir, { recursive: true });
    const args = [entries.worker, '--id', id, '--state-dir', stateDir, ...(o.args ?? [])];
    const env: Record<string, string> = {
      ...(process.env as Record<string, string>),
      ...s3Env,
      KILN_NATS_URL: nats.url,
      KILN_WORKER_HEARTBEAT_MS: '250',
      KILN_WORKER_DRAIN_TIMEOUT_MS: '5000',
      KILN_LOG_LEVEL: 'info',
      ...o.env,
    };
    let claims = 0;
    const onLine = (line: string): void => {
      if (line.includes('"task claimed"')) claims++;
    };
    let proc: ManagedProcess;
    if (o.user !== undefined) {
      await chown(stateDir, kilnUid, kilnUid);
      env.HOME = join(tmp.dir, 'home');
      proc = spawnManaged(
        'setpriv',
        [`--reuid=${o.user}`, `--regid=${o.user}`, '--init-groups', process.execPath, ...args],
        { name: `worker ${id}`, env, onLine },
      );
    } else {
      proc = spawnManaged(process.execPath, args, { name: `worker ${id}`, env, onLine });
    }
    workers.push(proc);
    await waitFor(`worker ${id} to register`, () => proc.output().includes('"worker registered"'), {
      abort: () => (proc.hasExited() ? `worker ${id} exited:\n${proc.output()}` : undefined),
    });
    return { proc, stateDir, claims: () => claims, output: () => proc.output() };
  };

  return {
    dir: tmp.dir,
    entries,
    nats,
    scheduler,
    kilnUid,
    startWorker,
    stop: async () => {
      for (const w of workers) await w.stop(10_000);
      await scheduler.proc.stop(10_000);
      await nats.stop();
      tmp.remove();
    },
  };
}
