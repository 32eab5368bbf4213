/**
 * The single-machine farm's parts in one process: a nats-server child process (JetStream under
 * the state dir, so task records, the farm's cache index, persist between builds), the scheduler
 * (Dispatcher and control API) and one worker, all sharing the filesystem content store under the
 * state dir. The local farm daemon (`daemon.ts`) runs this; nothing on the client path imports
 * it (it loads the scheduler and the worker).
 *
 * A farm starts with an empty task queue: what a dead predecessor left queued belonged to builds
 * that died with it.
 *
 * Layout under the state dir: `nats/` (JetStream), `nats-server.conf` (0600: the users and
 * permissions generated at this start, see `@kiln/bus` nats-permissions.ts), `store/` (content
 * store), `worker/` (snapshots, runtime state), `farm.lock` (the pid of the one process whose
 * farm this is).
 */
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
import { CACHE_STORE_INBOX_PREFIX, TASK_STREAM, connectNats, generateFarmAuth } from '@kiln/bus';
import { liveDigests, startStoreCollector } from '@kiln/cache-store';
import { parseDuration, startNatsServer } from '@kiln/common';
import type { NatsServerProcess } from '@kiln/common';
import { ENTITLEMENTS, formatPlatform, hostPlatform, parsePlatform } from '@kiln/llb';
import { KilnError } from '@kiln/protocol';
import { Authenticator, Dispatcher, ControlServer, registryMetaResolver } from '@kiln/scheduler';
import { FsBlobStore } from '@kiln/store';
import { WorkerNode, binfmtRegistered, defaultSlots, loadConfig } from '@kiln/worker';
import type { Logger } from 'pino';
import { farmAlive, farmPaths, processStartTime } from './paths.js';

/** The worker's task limits and sandbox settings a local farm takes from its environment. */
const WORKER_LIMIT_VARS = [
  'KILN_WORKER_MEMORY_LIMIT',
  'KILN_WORKER_PIDS_LIMIT',
  'KILN_WORKER_CPU_SHARES',
  'KILN_WORKER_TIME_LIMIT',
  'KILN_WORKER_SANDBOX_DENY',
];

const LOCAL_WORKER_ID = 'local';

export interface FarmServicesOptions {
  stateDir: string;
  /** Where the control API listens: `unix:/path` or `host:port`. */
  listen: string;
  insecureRegistries: readonly string[];
  /** Tasks the worker runs at once. Default: the worker's default (`defaultSlots`). */
  slots?: number;
  log: Logger;
}

export interface FarmServices {
  readonly server: ControlServer;
  /** Ready vertices run at once on the farm's worker. */
  readonly slots: number;
  /** Platforms the worker runs (`linux/amd64`, `linux/arm64` emulated...). */
  readonly platforms: string[];
  close(): Promise<void>;
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
    'LOCAL_FARM_UNAVAILABLE',
    `${name} is not installed: run scripts/setup.sh, or build on a farm with --addr`,
  );
}

/** One farm per state dir at a time: a lock file holding the owner's pid. */
function lockStateDir(stateDir: string): () => void {
  const path = join(stateDir, 'farm.lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, 'wx');
      writeFileSync(fd, `${process.pid} ${processStartTime(process.pid) ?? ''}`);
      return () => rmSync(path, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const [pidText = '', startTime] = readFileSync(path, 'utf8').trim().split(' ');
      const pid = Number(pidText);
      if (farmAlive({ pid, ...(startTime ? { startTime } : {}) }))
        throw new KilnError(
          'LOCAL_FARM_BUSY',
          `another local farm (pid ${pid}) is using ${stateDir}; stop it (kiln farm stop) or set KILN_STATE_DIR to another directory`,
        );
      rmSync(path, { force: true }); // left by a process that died
    }
  }
  throw new KilnError('LOCAL_FARM_BUSY', `cannot lock ${stateDir}`);
}

/** The foreign platforms this machine can run through a registered qemu binfmt handler. */
function emulatedPlatforms(native: string): string[] {
  const candidates = [
    'linux/amd64',
    'linux/arm64',
    'linux/arm/v7',
    'linux/ppc64le',
    'linux/s390x',
    'linux/riscv64',
  ];
  return candidates.filter((p) => {
    if (p === native) return false;
    return binfmtRegistered(parsePlatform(p));
  });
}

export async function startFarmServices(o: FarmServicesOptions): Promise<FarmServices> {
  mkdirSync(o.stateDir, { recursive: true });
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
    // Fresh credentials at every start (a user per role, the farm's permissions), so the bus is
    // closed to anything else on the machine and the farm needs no configuration.
    const auth = generateFarmAuth([LOCAL_WORKER_ID]);
    const nats: NatsServerProcess = await startNatsServer({
      bin: which('nats-server'),
      storeDir: join(o.stateDir, 'nats'),
      portsDir: join(o.stateDir, 'nats-ports'),
      config: auth.config,
      configFile: join(o.stateDir, 'nats-server.conf'),
    });
    stops.push(async () => {
      await nats.process.stop();
    });
    const nc = await connectNats(nats.url, auth.scheduler);
    stops.push(() => nc.close());
    const dispatcher = await Dispatcher.start({ nc, affinityDelayMs: 0 });
    stops.push(() => dispatcher.close());
    // Every build of a previous farm on this state dir ended with it (crashed, killed, stopped):
    // the tasks it left on the queue have nobody waiting, so none of them may run. A build that
    // asks for one of them again places it anew (its record is adopted and re-dispatched).
    await dispatcher.bus.jsm.streams.purge(TASK_STREAM);
    const storeDir = farmPaths(o.stateDir).store;
    const native = formatPlatform(hostPlatform());
    const server = new ControlServer({
      dispatcher,
      store: new FsBlobStore({ root: storeDir }),
      // Its clients run as its owner on this machine: an artifact is handed over by reference,
      // and the client copies it from the store (no stream of its bytes through the socket).
      storeReadByClients: true,
      // Registry credentials come from each build's client (its docker config, through the
      // session), as on a remote farm: the daemon's own are never borrowed.
      metaResolver: registryMetaResolver({
        insecureRegistries: [...o.insecureRegistries],
        dockerConfig: false,
      }),
      insecureRegistries: [...o.insecureRegistries],
      defaultPlatform: native,
      log: o.log.child({ component: 'control' }),
      // Only its owner reaches the farm (a 0600 unix socket): the one tenant `local`, allowed
      // every entitlement as a buildkitd started with them; a build still has to ask (--allow).
      auth: new Authenticator({ allow: ENTITLEMENTS }),
    });
    await server.listen(o.listen);
    stops.push(() => server.close());
    const slots = o.slots ?? defaultSlots();
    const emulate = emulatedPlatforms(native);
    const config = loadConfig({
      env: {
        KILN_NATS_URL: nats.url,
        KILN_NATS_USER: auth.workers[LOCAL_WORKER_ID]?.user,
        KILN_NATS_PASSWORD: auth.workers[LOCAL_WORKER_ID]?.password,
        KILN_WORKER_ID: LOCAL_WORKER_ID,
        KILN_WORKER_STATE_DIR: join(o.stateDir, 'worker'),
        KILN_STORE_DIR: storeDir,
        KILN_WORKER_SLOTS: String(slots),
        KILN_WORKER_EMULATE: emulate.join(','),
        KILN_INSECURE_REGISTRIES: o.insecureRegistries.join(','),
        KILN_WORKER_HEARTBEAT_MS: '1000',
        // The local cache's garbage collection (KILN_WORKER_GC_*: docs/local-farm.md) and the
        // task limits (docs/sandbox.md) follow the daemon's environment; unset, the worker's
        // defaults (10% of the disk, 60 days; a pids limit only).
        ...Object.fromEntries(
          Object.entries(process.env).filter(
            ([k]) => k.startsWith('KILN_WORKER_GC') || WORKER_LIMIT_VARS.includes(k),
          ),
        ),
      },
    });
    const node = await WorkerNode.start(config, {
      logger: o.log.child({ component: 'worker' }),
      store: new FsBlobStore({ root: storeDir }),
    });
    // Tasks still running when the farm stops are abandoned with it (their records are fenced:
    // the next farm on this state dir runs them again if a build asks).
    stops.push(() => node.close());
    // The content store's collector (cache-store): blobs no cache record names and unused for a
    // day (KILN_GC_STORE_KEEP_DURATION) go, a minute after start and then hourly. Its own bus
    // user, the farm's read-only kiln-cache-store role, as on a farm deployment.
    const storeNc = await connectNats(nats.url, {
      ...auth.cacheStore,
      inboxPrefix: CACHE_STORE_INBOX_PREFIX,
    });
    stops.push(() => storeNc.close());
    const collector = startStoreCollector({
      store: new FsBlobStore({ root: storeDir }),
      live: () => liveDigests(storeNc),
      keepDurationMs: parseDuration(process.env.KILN_GC_STORE_KEEP_DURATION || '24h'),
      intervalMs: 3600_000,
      firstRunMs: 60_000,
      onReport: (r) => o.log.info(r, 'store collected'),
      onError: (err) => o.log.warn({ err: String(err) }, 'store collection failed'),
    });
    stops.push(() => collector.stop());
    const deadline = Date.now() + 30_000;
    while (!dispatcher.liveWorkers().some((w) => w.id === node.id)) {
      if (Date.now() > deadline)
        throw new KilnError('LOCAL_FARM_UNAVAILABLE', 'the local worker did not register');
      await new Promise((r) => setTimeout(r, 10));
    }
    return { server, slots, platforms: [native, ...emulate], close };
  } catch (err) {
    await close();
    throw err;
  }
}
