/**
 * Where `kiln build` builds: a remote scheduler (`--addr` / `KILN_ADDR`), or the embedded
 * single-machine farm started for the duration of the command: a nats-server child process
 * (JetStream under the state dir, so task records, the farm's cache index, persist between
 * builds), the scheduler (Dispatcher and control API on a loopback port) and one worker
 * in-process, all sharing the filesystem content store under the state dir. The build itself goes
 * through the same client, session and control API either way.
 *
 * Embedded layout under the state dir: `nats/` (JetStream), `store/` (content store), `worker/`
 * (snapshots, runtime state), `logs/embedded.log` (the services' pino logs, JSON lines).
 */
import { availableParallelism } from 'node:os';
import {
  accessSync,
  constants,
  mkdirSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { KilnClient } from '@kiln/client';
import { startNatsServer } from '@kiln/common';
import type { NatsServerProcess } from '@kiln/common';
import { formatPlatform, hostPlatform } from '@kiln/llb';
import { KilnError } from '@kiln/protocol';
import type { Logger } from 'pino';

export interface Farm {
  readonly client: KilnClient;
  /** `embedded (<state dir>)` or the scheduler's address, for messages. */
  readonly where: string;
  close(): Promise<void>;
}

/** Connects to a running scheduler. */
export async function remoteFarm(addr: string): Promise<Farm> {
  const client = await KilnClient.connect(addr);
  return {
    client,
    where: addr,
    close: () => {
      client.close();
      return Promise.resolve();
    },
  };
}

export interface EmbeddedFarmOptions {
  stateDir: string;
  /** Platforms the build targets; those the CPU lacks are run emulated (qemu binfmt). */
  platforms: { os: string; architecture: string; variant?: string }[];
  insecureRegistries: string[];
}

function which(name: string): string {
  for (const d of (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/usr/bin'])) {
    const p = join(d, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  throw new KilnError(
    'EMBEDDED_FARM_UNAVAILABLE',
    `${name} is not installed: run scripts/setup.sh, or build on a farm with --addr`,
  );
}

/** One embedded farm per state dir at a time: a lock file holding the owner's pid. */
function lockStateDir(stateDir: string): () => void {
  const path = join(stateDir, 'embedded.lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, 'wx');
      writeFileSync(fd, String(process.pid));
      return () => rmSync(path, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const pid = Number(readFileSync(path, 'utf8'));
      let alive = false;
      try {
        if (pid > 0) process.kill(pid, 0);
        alive = pid > 0;
      } catch {
        alive = false;
      }
      if (alive)
        throw new KilnError(
          'EMBEDDED_FARM_BUSY',
          `another kiln build (pid ${pid}) is using ${stateDir}; wait for it, set KILN_STATE_DIR to another directory, or build on a farm with --addr`,
        );
      rmSync(path, { force: true }); // left by a process that died
    }
  }
  throw new KilnError('EMBEDDED_FARM_BUSY', `cannot lock ${stateDir}`);
}

export async function startEmbeddedFarm(o: EmbeddedFarmOptions): Promise<Farm> {
  mkdirSync(join(o.stateDir, 'logs'), { recursive: true });
  const unlock = lockStateDir(o.stateDir);
  const stops: (() => Promise<void>)[] = [
    () => {
      unlock();
      return Promise.resolve();
    },
  ];
  const close = async (): Promise<void> => {
    for (const s of stops.reverse()) await s().catch(() => undefined);
  };
  try {
    const [{ pino }, { connect }, scheduler, worker, { FsBlobStore }] = await Promise.all([
      import('pino'),
      import('@nats-io/transport-node'),
      import('@kiln/scheduler'),
      import('@kiln/worker'),
      import('@kiln/store'),
    ]);
    const log: Logger = pino(
      { name: 'kiln-embedded', level: process.env.KILN_LOG_LEVEL || 'info' },
      pino.destination({ dest: join(o.stateDir, 'logs', 'embedded.log'), sync: false }),
    );
    stops.push(() => new Promise<void>((r) => log.flush(() => r())));
    const nats: NatsServerProcess = await startNatsServer({
      bin: which('nats-server'),
      storeDir: join(o.stateDir, 'nats'),
      portsDir: join(o.stateDir, 'nats-ports'),
    });
    stops.push(async () => {
      await nats.process.stop();
    });
    const nc = await connect({ servers: nats.url, maxReconnectAttempts: -1, noAsyncTraces: true });
    stops.push(() => nc.close());
    const dispatcher = await scheduler.Dispatcher.start({ nc, affinityDelayMs: 0 });
    stops.push(() => dispatcher.close());
    const storeDir = join(o.stateDir, 'store');
    const server = new scheduler.ControlServer({
      dispatcher,
      store: new FsBlobStore({ root: storeDir }),
      metaResolver: scheduler.registryMetaResolver({ insecureRegistries: o.insecureRegistries }),
      defaultPlatform: hostPlatformName(),
      log: log.child({ component: 'control' }),
    });
    const port = await server.listen('127.0.0.1:0');
    stops.push(() => server.close());
    const native = hostPlatformName();
    const emulate = [
      ...new Set(
        o.platforms
          .map((p) => [p.os, p.architecture, p.variant].filter(Boolean).join('/'))
          .filter((p) => p !== native),
      ),
    ];
    const config = worker.loadConfig({
      env: {
        KILN_NATS_URL: nats.url,
        KILN_WORKER_ID: 'embedded',
        KILN_WORKER_STATE_DIR: join(o.stateDir, 'worker'),
        KILN_STORE_DIR: storeDir,
        KILN_WORKER_SLOTS: String(availableParallelism()),
        KILN_WORKER_EMULATE: emulate.join(','),
        KILN_INSECURE_REGISTRIES: o.insecureRegistries.join(','),
        KILN_WORKER_HEARTBEAT_MS: '1000',
      },
    });
    const node = await worker.WorkerNode.start(config, {
      logger: log.child({ component: 'worker' }),
      store: new FsBlobStore({ root: storeDir }),
    });
    // The build is over when the farm stops: nothing runs, so no drain is needed (and its
    // registration is replaced by the next embedded worker of the same id).
    stops.push(() => node.close());
    const deadline = Date.now() + 30_000;
    while (!dispatcher.liveWorkers().some((w) => w.id === node.id)) {
      if (Date.now() > deadline)
        throw new KilnError('EMBEDDED_FARM_UNAVAILABLE', 'the embedded worker did not register');
      await new Promise((r) => setTimeout(r, 10));
    }
    const client = await KilnClient.connect(`127.0.0.1:${port}`);
    stops.push(() => {
      client.close();
      return Promise.resolve();
    });
    return { client, where: `embedded (${o.stateDir})`, close };
  } catch (err) {
    await close();
    throw err;
  }
}

const hostPlatformName = (): string => formatPlatform(hostPlatform());
