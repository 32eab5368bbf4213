/**
 * Where the local farm lives under a state dir, what its `farm.json` says, and the code stamp that
 * tells a client whether a running farm runs the code it would start. Light on purpose: the client
 * path imports this, never the farm's services.
 */
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pidAlive } from '@kiln/common';

export { pidAlive };

export interface FarmPaths {
  /** The control API's unix socket. */
  socket: string;
  /** {@link FarmInfo} of the running farm, written once it is ready. */
  info: string;
  /** Held (O_EXCL, with the holder's pid) by the one client starting a farm. */
  startLock: string;
  /** The daemon's stdout and stderr (pino JSON lines). */
  log: string;
  /** The filesystem content store (its clients read artifacts from it). */
  store: string;
}

export interface FarmInfo {
  pid: number;
  /** The pid's start time (`/proc/<pid>/stat` field 22): a pid reused by another process differs. */
  startTime?: string;
  socket: string;
  /** {@link codeStamp} of the code the farm runs. */
  stamp: string;
  insecureRegistries: string[];
  platforms: string[];
  slots: number;
  /** 0: never stops by itself. */
  idleTimeoutMs: number;
  startedAt: string;
}

export function farmPaths(stateDir: string): FarmPaths {
  return {
    socket: join(stateDir, 'farm.sock'),
    info: join(stateDir, 'farm.json'),
    startLock: join(stateDir, 'farm.start.lock'),
    log: join(stateDir, 'logs', 'farm.log'),
    store: join(stateDir, 'store'),
  };
}

/** The `@kiln/cli` package directory (this file is in `src/farm` or `dist/farm`). */
const cliRoot = (): string => fileURLToPath(new URL('../../', import.meta.url));

/**
 * The daemon's entry point: `$KILN_FARM_DAEMON` (tests run one bundled from source), else the
 * compiled one, whether the caller runs from `src` or `dist`.
 */
export function daemonEntry(env: NodeJS.ProcessEnv = process.env): string {
  return env.KILN_FARM_DAEMON || join(cliRoot(), 'dist', 'farm', 'daemon.js');
}

/**
 * A stamp of the farm's code, computed by the client (the daemon records the one it was started
 * with): the daemon's entry and the newest build of the CLI and of every library and service of
 * the workspace beside it (their `dist/.tsbuildinfo`). A farm whose stamp differs runs other code
 * (Kiln was rebuilt or upgraded) and is replaced.
 */
export function codeStamp(entry: string = daemonEntry()): string {
  const root = join(cliRoot(), '..');
  const files = [join(cliRoot(), 'dist', '.tsbuildinfo'), entry];
  for (const group of ['libs', 'services']) {
    let names: string[] = [];
    try {
      names = readdirSync(join(root, group));
    } catch {
      continue; // not the workspace layout
    }
    for (const n of names) files.push(join(root, group, n, 'dist', '.tsbuildinfo'));
  }
  let newest = 0;
  for (const f of files) {
    try {
      newest = Math.max(newest, statSync(f).mtimeMs);
    } catch {
      // not built, or not there
    }
  }
  return `${version()}+${Math.floor(newest)}+${entry}`;
}

function version(): string {
  try {
    return (
      JSON.parse(readFileSync(join(cliRoot(), 'package.json'), 'utf8')) as { version: string }
    ).version;
  } catch {
    return '0';
  }
}

/** The running farm's record, if it left a readable one. */
export function readFarmInfo(stateDir: string): FarmInfo | undefined {
  try {
    const v = JSON.parse(readFileSync(farmPaths(stateDir).info, 'utf8')) as Partial<FarmInfo>;
    return typeof v.pid === 'number' && typeof v.socket === 'string' ? (v as FarmInfo) : undefined;
  } catch {
    return undefined;
  }
}

/** When `pid` started, in clock ticks since boot (`/proc/<pid>/stat` field 22); undefined if gone. */
export function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may hold spaces and parentheses): state is field 3.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** Whether the farm `info` describes still runs: its pid lives and is the same process. */
export function farmAlive(info: Pick<FarmInfo, 'pid' | 'startTime'>): boolean {
  if (!pidAlive(info.pid)) return false;
  return info.startTime === undefined || processStartTime(info.pid) === info.startTime;
}
