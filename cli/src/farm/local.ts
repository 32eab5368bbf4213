/**
 * Where `kiln build` builds: a remote scheduler (`--addr` / `KILN_ADDR`), or the local farm, a
 * daemon that stays up between builds as buildkitd does (daemon.ts). The client side here loads
 * only the client library: the farm's services load in the daemon's process.
 *
 * The local farm, per state dir:
 * - a client reads `farm.json`; if its pid lives, runs this code (same {@link codeStamp}) and was
 *   started with every `--insecure-registry` the build needs, the client connects to its socket;
 * - no farm, or a dead one (the pid is gone: crashed, killed, machine rebooted): its leftovers are
 *   removed and a new daemon is started in the background (detached, logs in `logs/farm.log`);
 *   one client starts it (`farm.start.lock`), concurrent ones wait for it to be ready;
 * - a farm whose pid lives but does not answer on its socket within {@link HUNG_MS} is hung: it
 *   is killed and replaced, never waited on;
 * - a farm of other code or config is asked to stop (it lets running builds finish) and replaced.
 */
import { spawn } from 'node:child_process';
import {
  closeSync,
  mkdirSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { KilnClient } from '@kiln/client';
import type { ConnectOptions } from '@kiln/client';
import { KilnError } from '@kiln/protocol';
import { codeStamp, daemonEntry, farmAlive, farmPaths, pidAlive, readFarmInfo } from './paths.js';
import type { FarmInfo } from './paths.js';

export interface Farm {
  readonly client: KilnClient;
  /** `local farm (<state dir>)` or the scheduler's address, for messages. */
  readonly where: string;
  /** The local farm's content store directory, which this client reads (`localStore`). */
  readonly store?: string;
  close(): Promise<void>;
}

/** Connects to a running scheduler (with TLS and a token when given). */
export async function remoteFarm(addr: string, o: ConnectOptions = {}): Promise<Farm> {
  const client = await KilnClient.connect(addr, o);
  return { client, where: addr, close: () => Promise.resolve(client.close()) };
}

export interface LocalFarmOptions {
  stateDir: string;
  /** Registries the build talks plain HTTP to (loopback ones always are). */
  insecureRegistries: readonly string[];
  /** For a farm this call starts: stop after this long with no build. 0: never. */
  idleTimeoutMs: number;
  /** For a farm this call starts: tasks run at once (default: the farm's). */
  slots?: number;
  /** Told when the call waits for something (a farm that finishes its builds before a restart). */
  onWait?: (message: string) => void;
}

/** How long a live farm may take to accept a connection on its socket before it counts as hung. */
const HUNG_MS = 10_000;
/** How long a new farm may take to be ready. */
const START_MS = 60_000;
/** How long a farm asked to stop may take to finish its running builds. */
const STOP_MS = 11 * 60_000;

export const DEFAULT_IDLE_TIMEOUT_MS = 15 * 60_000;

/** A client of the local farm of `stateDir`, started (or replaced) first when needed. */
export async function localFarm(o: LocalFarmOptions): Promise<Farm> {
  const paths = farmPaths(o.stateDir);
  const stamp = codeStamp();
  for (let round = 0; round < 5; round++) {
    const info = readFarmInfo(o.stateDir);
    if (info && farmAlive(info)) {
      const missing = o.insecureRegistries.filter((r) => !info.insecureRegistries.includes(r));
      if (info.stamp !== stamp || missing.length > 0) {
        o.onWait?.(
          info.stamp !== stamp
            ? `the local farm (pid ${info.pid}) runs other code: replacing it once its builds finish`
            : `the local farm (pid ${info.pid}) lacks --insecure-registry ${missing.join(',')}: replacing it once its builds finish`,
        );
        await stopFarm(o.stateDir, info);
        o = {
          ...o,
          insecureRegistries: [...new Set([...info.insecureRegistries, ...o.insecureRegistries])],
        };
        continue;
      }
      if (!socketExists(info.socket)) {
        // It removed its socket: it is stopping (idle, or asked to). Wait for it to go.
        o.onWait?.(`the local farm (pid ${info.pid}) is stopping: waiting for it`);
        await waitExit(info, STOP_MS);
        continue;
      }
      const client = await KilnClient.connect(`unix:${info.socket}`, {
        connectTimeoutMs: HUNG_MS,
        // A local farm that dies takes its builds with it: nothing to send them again to.
        resubmit: false,
      }).catch(() => undefined);
      if (client)
        return {
          client,
          where: `local farm (${o.stateDir})`,
          store: paths.store,
          close: () => Promise.resolve(client.close()),
        };
      if (!farmAlive(info)) continue; // it died meanwhile
      // Alive but not answering: hung. Replaced, not waited on.
      o.onWait?.(`the local farm (pid ${info.pid}) does not answer: replacing it`);
      if (farmAlive(info)) killHard(info.pid);
      await waitExit(info, 10_000);
      removeLeftovers(o.stateDir, info.pid);
      continue;
    }
    if (info) removeLeftovers(o.stateDir, info.pid);
    await startDaemon(o, paths, stamp);
  }
  throw new KilnError('LOCAL_FARM_UNAVAILABLE', `cannot start the local farm in ${o.stateDir}`);
}

export interface StopResult {
  /** The farm that was asked to stop; undefined when none ran. */
  pid?: number;
}

/** Asks the local farm to stop (running builds finish first) and waits until it has. */
export async function stopLocalFarm(stateDir: string): Promise<StopResult> {
  const info = readFarmInfo(stateDir);
  if (!info || !farmAlive(info)) {
    if (info) removeLeftovers(stateDir, info.pid);
    return {};
  }
  await stopFarm(stateDir, info);
  return { pid: info.pid };
}

export interface FarmStatus {
  state: 'running' | 'stopped' | 'not-answering';
  info?: FarmInfo;
  /** The code the farm runs is not the code this CLI would start. */
  stale?: boolean;
}

/** What runs on `stateDir`; a running farm is asked for its workers (it must answer). */
export async function localFarmStatus(stateDir: string): Promise<FarmStatus> {
  const info = readFarmInfo(stateDir);
  if (!info || !farmAlive(info)) return { state: 'stopped' };
  const stale = info.stamp !== codeStamp();
  const client = await KilnClient.connect(`unix:${info.socket}`, {
    connectTimeoutMs: 3_000,
  }).catch(() => undefined);
  if (!client) return { state: 'not-answering', info, stale };
  client.close();
  return { state: 'running', info, stale };
}

async function stopFarm(stateDir: string, info: FarmInfo): Promise<void> {
  try {
    if (farmAlive(info)) process.kill(info.pid, 'SIGTERM');
  } catch {
    // already gone
  }
  if (!(await waitExit(info, STOP_MS))) {
    if (farmAlive(info)) killHard(info.pid);
    await waitExit(info, 10_000);
  }
  removeLeftovers(stateDir, info.pid);
}

/** Starts the daemon, or waits for the one a concurrent client is starting, until it is ready. */
async function startDaemon(
  o: LocalFarmOptions,
  paths: ReturnType<typeof farmPaths>,
  stamp: string,
): Promise<void> {
  mkdirSync(`${o.stateDir}/logs`, { recursive: true });
  let lock: number;
  try {
    lock = openSync(paths.startLock, 'wx');
    writeFileSync(lock, String(process.pid));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    const holder = Number(readFileSync(paths.startLock, 'utf8'));
    if (!pidAlive(holder)) {
      rmSync(paths.startLock, { force: true });
      return;
    }
    // Another client starts the farm: ready when its farm.json appears, or failed if it is gone.
    const until = Date.now() + START_MS;
    while (Date.now() < until && pidAlive(holder)) {
      const info = readFarmInfo(o.stateDir);
      if (info && farmAlive(info)) return;
      await delay(20);
    }
    return;
  }
  const log = openSync(paths.log, 'a');
  try {
    const args = [
      daemonEntry(),
      '--stamp',
      stamp,
      '--state-dir',
      o.stateDir,
      '--idle-timeout',
      String(o.idleTimeoutMs),
      ...(o.slots ? ['--slots', String(o.slots)] : []),
      ...o.insecureRegistries.flatMap((r) => ['--insecure-registry', r]),
    ];
    const child = spawn(process.execPath, args, {
      detached: true,
      stdio: ['ignore', log, log],
      env: process.env,
    });
    child.unref();
    let exited: number | null | undefined;
    child.once('exit', (code) => (exited = code));
    child.once('error', () => (exited = -1));
    const until = Date.now() + START_MS;
    for (;;) {
      const info = readFarmInfo(o.stateDir);
      if (info?.pid === child.pid) return;
      if (exited !== undefined)
        throw new KilnError(
          'LOCAL_FARM_UNAVAILABLE',
          `the local farm did not start (exit ${exited}):\n${tail(paths.log)}`,
        );
      if (Date.now() > until) {
        killHard(child.pid ?? 0);
        throw new KilnError(
          'LOCAL_FARM_UNAVAILABLE',
          `the local farm was not ready within ${START_MS / 1000} s:\n${tail(paths.log)}`,
        );
      }
      await delay(10);
    }
  } finally {
    closeSync(log);
    rmSync(paths.startLock, { force: true });
  }
}

/** The last lines of the daemon's log that are not routine (its errors, most often). */
function tail(path: string): string {
  try {
    return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-10).join('\n');
  } catch {
    return '(no log)';
  }
}

function removeLeftovers(stateDir: string, pid: number): void {
  const p = farmPaths(stateDir);
  if (readFarmInfo(stateDir)?.pid === pid) rmSync(p.info, { force: true });
  rmSync(p.socket, { force: true });
}

function socketExists(path: string): boolean {
  try {
    return statSync(path).isSocket();
  } catch {
    return false;
  }
}

function killHard(pid: number): void {
  if (!(pid > 0)) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

async function waitExit(info: FarmInfo, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (farmAlive(info)) {
    if (Date.now() > until) return false;
    await delay(20);
  }
  return true;
}

const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** `30s`, `10m`, `1h30m`, `500ms`, or a number of seconds; `0` never. */
export { parseDuration } from '@kiln/common';
