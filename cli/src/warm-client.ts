/**
 * The warm client: a `kiln` process started and loaded ahead of the command it will run.
 *
 * A fully cached `kiln build` takes ~150 ms, and a fresh Node process spends ~70-90 ms of it
 * before the build's first call: Node's start, the bundle's load, builtins, the first run of the
 * code. So when a build ends, a new process is left behind (`leaveWarmClient`), loaded and waiting
 * on a unix socket in the user's cache dir (`serveWarmClient`); the next `kiln build` is handed to
 * it by the native launcher (cli/native/kiln-launch.c, which documents the protocol): its argv,
 * cwd, umask, environment and its standard input, output and error themselves (descriptors passed
 * over the socket), so the command runs exactly as in a process of its own. One process runs one
 * command and exits; it leaves its own successor at exit.
 *
 * Bounds: at most {@link MAX_WAITING} waiting processes per bundle and checkout; each exits after
 * `KILN_WARM_IDLE_MS` (default 15 minutes) without a command, or as soon as its bundle is rebuilt.
 * Only the same user's launcher is served (SO_PEERCRED), through a directory only that user can
 * enter (mode 0700, checked). `KILN_WARM_CLIENT=0` turns it off.
 */
import { spawn } from 'node:child_process';
import {
  closeSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readSync,
  readdirSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { Socket } from 'node:net';
import { WriteStream, isatty } from 'node:tty';
import { dirname, join } from 'node:path';
import { dup2, recvFds, unixAccept, unixListen, type UnixConnection } from '@kiln/sys';
import { pidAlive } from '@kiln/common';

/** Waiting processes per bundle and checkout (a second covers two builds started together). */
export const MAX_WAITING = 2;
/** The largest request (arguments and environment) a launcher may send. */
export const MAX_REQUEST = 4 << 20;
const DEFAULT_IDLE_MS = 15 * 60_000;
/** How long one exchange with a launcher may stall before the process gives up on it. */
const IO_TIMEOUT_MS = 5_000;
/** How often a waiting process checks that its bundle and socket are still current. */
const CHECK_MS = 30_000;

/**
 * The directory of the waiting processes' sockets, `warm/` in the user's kiln cache dir (the one
 * cli/bin/kiln.js found and checked for its code cache); undefined when it is not safely the
 * user's alone (mode 0700, owned by the user).
 */
export function warmDir(cacheDir: string): string | undefined {
  const dir = join(cacheDir, 'warm');
  try {
    mkdirSync(dir, { mode: 0o700 });
  } catch {
    // It exists, or cannot be made: the check below decides.
  }
  try {
    const st = lstatSync(dir);
    if (!st.isDirectory() || st.uid !== process.geteuid?.() || (st.mode & 0o077) !== 0)
      return undefined;
    return dir;
  } catch {
    return undefined;
  }
}

/** FNV-1a (32 bits) of a string's UTF-8 bytes, as the launcher computes it. */
export function fnv1a(s: string): string {
  let h = 0x811c9dc5;
  for (const b of Buffer.from(s)) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h.toString(16).padStart(8, '0');
}

/** Socket names of the processes that run `script` with the bundle of sha256 `hash`. */
export const warmPrefix = (script: string, hash: string): string =>
  `z-${fnv1a(script)}-${hash.slice(0, 16)}-`;

/** What a launcher asked for. */
interface Request {
  fds: number[];
  cwd: string;
  umask: number;
  args: string[];
  env: string[];
}

export interface WarmClientOptions {
  /** The real path of cli/bin/kiln.js. */
  script: string;
  /** The file holding the bundle's sha256 (cli/dist/bundle/main.cjs.sha256). */
  hashFile: string;
  /** The user's kiln cache dir (kiln.js's, checked there); none: no safe place to wait in. */
  cacheDir: string | undefined;
  /** Loads what the command will need, before waiting (the bundle's `preloadBuild`). */
  preload?: () => Promise<void>;
  /** Runs the command (the bundle's `main`). */
  main: (argv: string[]) => Promise<number>;
  /** Called with the command's exit code once it ran (kiln.js writes its code cache). */
  done?: (code: number) => void;
}

/**
 * Waits for one command and runs it (blocking this process's thread while it waits: it has
 * nothing else to do), or exits when it should not wait (another process waits already, idle
 * too long, its bundle changed). Returns once the command has started.
 */
export async function serveWarmClient(o: WarmClientOptions): Promise<void> {
  process.chdir('/');
  const idleMs = Number(process.env.KILN_WARM_IDLE_MS) || DEFAULT_IDLE_MS;
  const hash = readHash(o.hashFile);
  const dir = o.cacheDir === undefined ? undefined : warmDir(o.cacheDir);
  if (!dir || !hash) process.exit(0);
  const prefix = warmPrefix(o.script, hash);
  if (waiting(dir, prefix) >= MAX_WAITING) process.exit(0);
  const path = join(dir, `${prefix}${process.pid}.sock`);
  const listener = unixListen(path, 8);
  const ino = lstatSync(path).ino;
  await o.preload?.();
  const deadline = Date.now() + idleMs;
  for (;;) {
    const conn = unixAccept(listener, CHECK_MS, IO_TIMEOUT_MS);
    if (conn) {
      const req = receive(conn, o.script);
      if (!req) continue;
      // From here this process owns the command: nobody else may connect.
      unlinkSync(path);
      closeSync(listener);
      run(req, conn.fd, o);
      return;
    }
    if (Date.now() > deadline || readHash(o.hashFile) !== hash || !same(path, ino)) {
      if (same(path, ino)) unlinkSync(path);
      process.exit(0);
    }
  }
}

/**
 * Starts a waiting process for the next command (detached, no stdio, a minimal environment:
 * each command brings its own). Errors are ignored: the next command then starts Node itself.
 */
export function leaveWarmClient(script: string, env: NodeJS.ProcessEnv = process.env): void {
  if (env.KILN_WARM_CLIENT === '0') return;
  const keep = [
    'PATH',
    'HOME',
    'KILN_CACHE_DIR',
    'XDG_CACHE_HOME',
    'KILN_WARM_IDLE_MS',
    'LANG',
    'TZ',
  ];
  const childEnv: NodeJS.ProcessEnv = {};
  for (const k of keep) if (env[k] !== undefined) childEnv[k] = env[k];
  // Through the launcher, which closes every descriptor this process may have inherited (the
  // command's /dev/fd/N): the new process lives on and must not hold them.
  const launcher = join(dirname(script), '..', 'dist', 'kiln-launch');
  try {
    spawn(launcher, ['--serve', script], {
      detached: true,
      stdio: 'ignore',
      cwd: '/',
      env: childEnv,
    })
      .on('error', () => undefined)
      .unref();
  } catch {
    // No process left behind: only the next command's start is slower.
  }
}

function readHash(file: string): string | undefined {
  try {
    const h = readFileSync(file, 'latin1').trim();
    return /^[0-9a-f]{64}$/.test(h) ? h : undefined;
  } catch {
    return undefined;
  }
}

/** Live waiting processes of `prefix`; sockets of dead ones are removed. */
function waiting(dir: string, prefix: string): number {
  let n = 0;
  for (const name of readdirSync(dir)) {
    if (!name.startsWith(prefix) || !name.endsWith('.sock')) continue;
    const pid = Number(name.slice(prefix.length, -'.sock'.length));
    if (Number.isInteger(pid) && pid > 0 && pidAlive(pid)) n++;
    else {
      try {
        unlinkSync(join(dir, name));
      } catch {
        // Gone already.
      }
    }
  }
  return n;
}

function same(path: string, ino: number): boolean {
  try {
    return lstatSync(path).ino === ino;
  } catch {
    return false;
  }
}

/** Reads and acknowledges one request; undefined (everything closed) when it is not one. */
function receive(conn: UnixConnection, script: string): Request | undefined {
  let fds: number[] = [];
  try {
    if (conn.uid !== process.geteuid?.()) throw new Error('another user');
    const head = recvFds(conn.fd, 8, 3);
    fds = head.fds;
    if (head.data.length !== 8 || head.data.toString('latin1', 0, 4) !== 'KZ01') throw new Error();
    if (fds.length !== 3) throw new Error();
    const len = head.data.readUInt32LE(4);
    if (len > MAX_REQUEST) throw new Error();
    const payload = Buffer.alloc(len);
    for (let off = 0; off < len;) {
      const n = readSync(conn.fd, payload, off, len - off, null);
      if (n <= 0) throw new Error();
      off += n;
    }
    const parts = payload.toString('utf8').split('\0');
    if (parts.pop() !== '') throw new Error();
    const [path, cwd, mask, count, ...rest] = parts;
    const argc = Number(count);
    if (path !== script || !cwd || !Number.isInteger(argc) || argc < 0 || argc > rest.length)
      throw new Error();
    const ready = Buffer.alloc(5);
    ready.write('R', 0, 'latin1');
    ready.writeUInt32LE(process.pid, 1);
    writeSync(conn.fd, ready);
    const go = Buffer.alloc(1);
    if (readSync(conn.fd, go, 0, 1, null) !== 1 || go[0] !== 0x47 /* G */) throw new Error();
    return {
      fds,
      cwd,
      umask: parseInt(mask ?? '22', 8) & 0o777,
      args: rest.slice(0, argc),
      env: rest.slice(argc),
    };
  } catch {
    for (const fd of [...fds, conn.fd]) {
      try {
        closeSync(fd);
      } catch {
        // Closed already.
      }
    }
    return undefined;
  }
}

/**
 * Node made `process.stderr` while this process waited (loading node:http2 loads node:assert,
 * which asks stderr whether it has colours): a stream on /dev/null. It writes to fd 2, now the
 * command's, synchronously, which suits a file or a pipe; but on a terminal it would not say so
 * (`isTTY`, `columns`: `--progress auto` would print plain lines). Such a stream is replaced by
 * the terminal stream Node would have made.
 */
function terminalStreams(): void {
  for (const [fd, name] of [
    [1, 'stdout'],
    [2, 'stderr'],
  ] as const) {
    if (!isatty(fd) || process[name].isTTY) continue;
    const stream = new WriteStream(fd);
    Object.defineProperty(process, name, {
      configurable: true,
      enumerable: true,
      get: () => stream,
    });
  }
}

/** Becomes the launcher's process (stdio, environment, cwd, umask, argv) and runs the command. */
function run(req: Request, conn: number, o: WarmClientOptions): void {
  req.fds.forEach((fd, i) => {
    dup2(fd, i);
    closeSync(fd);
  });
  for (const k of Object.keys(process.env)) delete process.env[k];
  for (const e of req.env) {
    const eq = e.indexOf('=');
    if (eq > 0) process.env[e.slice(0, eq)] = e.slice(eq + 1);
  }
  // As cli/bin/kiln.js does for a command it starts.
  if (process.env.KILN_DEFERRED_CA_CERTS !== undefined) {
    process.env.NODE_EXTRA_CA_CERTS = process.env.KILN_DEFERRED_CA_CERTS;
    delete process.env.KILN_DEFERRED_CA_CERTS;
  }
  terminalStreams();
  process.umask(req.umask);
  process.argv = [process.execPath, o.script, ...req.args];
  let gone = false;
  process.on('exit', (code) => {
    if (!gone) {
      const x = Buffer.alloc(5);
      x.write('X', 0, 'latin1');
      x.writeUInt32LE(code & 0xff, 1);
      try {
        writeSync(conn, x);
      } catch {
        // The launcher is gone.
      }
    }
    leaveWarmClient(o.script);
  });
  // The launcher forwards every signal it can catch; its end (killed) ends the command as a
  // SIGTERM would, as the end of a terminal does.
  const watch = new Socket({ fd: conn, readable: true, writable: false });
  watch.on('data', () => undefined);
  const lost = (): void => {
    if (gone) return;
    gone = true;
    process.kill(process.pid, 'SIGTERM');
  };
  watch.on('end', lost);
  watch.on('error', lost);
  watch.unref();
  try {
    process.chdir(req.cwd);
  } catch (err) {
    process.stderr.write(`kiln: cannot enter ${req.cwd}: ${(err as Error).message}\n`);
    process.exitCode = 1;
    return;
  }
  if (process.env.KILN_DEBUG)
    process.stderr.write(`kiln: run by the warm client process ${process.pid}\n`);
  void o.main(process.argv).then((code) => {
    process.exitCode = code;
    o.done?.(code);
  });
}
