/**
 * `@kiln/sys`: the Linux system calls the worker needs and Node lacks (mount, umount2, mknod,
 * extended attributes), through a small Node-API addon (`native/kiln_sys.c`). One call is one
 * syscall: no process is spawned (a `mount` process costs 3-30 ms; the syscall, tens of µs).
 *
 * Errors are Node-style (`code` such as `EPERM`, `errno`, `syscall`, `path`), as `node:fs`'s.
 */
import { accessSync, constants as fsConstants, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Socket } from 'node:net';
import { constants } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';

interface Native {
  mount(
    source: string | null,
    target: string,
    fstype: string | null,
    flags: number,
    data: string | null,
  ): Promise<number>;
  umount2(target: string, flags: number): Promise<number>;
  mknod(path: string, mode: number, major: number, minor: number): number;
  lsetxattr(path: string, name: string, value: Buffer): number;
  lxattrs(path: string): [string, Buffer][] | number;
  treeXattrs(root: string): Promise<[string, [string, Buffer][]][] | number>;
  copyFiles(srcs: string[], dsts: string[], opts: number[]): Promise<number[] | number>;
  lstatDir(path: string): [string, string, string, Float64Array] | number | [number, string];
  spawn(
    path: string,
    argv: string[],
    envp: string[],
    onEvent: (kind: 0 | 1 | 2, a: number, b: number) => void,
  ): [number, number] | number;
  unixListen(path: string, backlog: number): [number] | number;
  unixAccept(
    fd: number,
    timeoutMs: number,
    ioTimeoutMs: number,
  ): [number, number, number] | number | null;
  recvFds(fd: number, maxBytes: number, maxFds: number): [Buffer, number[]] | number;
  dup2(oldFd: number, newFd: number): number;
}

let native: Native | undefined;

/**
 * The addon, loaded on first use (so that importing this package costs nothing): the file
 * `KILN_SYS_ADDON` names (code bundled away from its package sets it), else the package's own
 * `build/kiln_sys.node`.
 */
function addon(): Native {
  if (native) return native;
  const require = createRequire(import.meta.url);
  try {
    native = require(process.env.KILN_SYS_ADDON || '@kiln/sys/addon') as Native;
  } catch (err) {
    throw new Error(
      `@kiln/sys: the native addon is not built (${(err as Error).message}); ` +
        `run \`npm run build\` (it compiles libs/sys/native with cc)`,
      { cause: err },
    );
  }
  return native;
}

/** Whether the addon loads here (a client may do without it: see {@link lstatDir}). */
export function hasAddon(): boolean {
  try {
    addon();
    return true;
  } catch {
    return false; // not built, or not Linux: the caller takes its portable path
  }
}

const errnoNames = new Map<number, string>(
  Object.entries(constants.errno).map(([name, n]) => [n, name]),
);

/** An errno as a Node-style error: `EPERM: operation not permitted, mount '/x'`. */
export function errnoError(errno: number, syscall: string, path?: string): NodeJS.ErrnoException {
  const code = errnoNames.get(errno) ?? `E${errno}`;
  const err: NodeJS.ErrnoException = new Error(
    `${code}: ${describe(errno)}, ${syscall}${path === undefined ? '' : ` '${path}'`}`,
  );
  err.code = code;
  err.errno = -errno;
  err.syscall = syscall;
  if (path !== undefined) err.path = path;
  return err;
}

function describe(errno: number): string {
  // util.getSystemErrorMessage is Node >= 22; the messages of the errors met here.
  const known: Record<string, string> = {
    EPERM: 'operation not permitted',
    ENOENT: 'no such file or directory',
    EACCES: 'permission denied',
    EBUSY: 'device or resource busy',
    EEXIST: 'file exists',
    ENOTDIR: 'not a directory',
    EINVAL: 'invalid argument',
    ENODEV: 'no such device',
    ENOTSUP: 'operation not supported',
    EOPNOTSUPP: 'operation not supported',
    ENOSPC: 'no space left on device',
    ERANGE: 'result too large',
    ENAMETOOLONG: 'name too long',
    ELOOP: 'too many symbolic links encountered',
    EROFS: 'read-only file system',
    E2BIG: 'argument list too long',
    EMFILE: 'too many open files',
    EAGAIN: 'resource temporarily unavailable',
    ENOMEM: 'not enough memory',
  };
  return known[errnoNames.get(errno) ?? ''] ?? `errno ${errno}`;
}

/** mount(2) flags (linux/mount.h). */
export const MS = {
  RDONLY: 0x1,
  NOSUID: 0x2,
  NODEV: 0x4,
  NOEXEC: 0x8,
  REMOUNT: 0x20,
  BIND: 0x1000,
  REC: 0x4000,
  PRIVATE: 0x40000,
} as const;

/** umount2(2) flags. */
export const MNT = { FORCE: 0x1, DETACH: 0x2, EXPIRE: 0x4 } as const;
export const UMOUNT_NOFOLLOW = 0x8;

/**
 * mount(2), on libuv's thread pool. `data` is the filesystem's option string (overlay's
 * `lowerdir=...,upperdir=...`); the kernel takes at most one page of it.
 */
export async function mount(
  source: string | null,
  target: string,
  fstype: string | null,
  flags: number,
  data: string | null = null,
): Promise<void> {
  const errno = await addon().mount(source, target, fstype, flags, data);
  if (errno !== 0) throw errnoError(errno, 'mount', target);
}

/** umount2(2), on libuv's thread pool. */
export async function umount2(target: string, flags = 0): Promise<void> {
  const errno = await addon().umount2(target, flags);
  if (errno !== 0) throw errnoError(errno, 'umount2', target);
}

/** mknod(2): `mode` holds the type (S_IFCHR, S_IFBLK, S_IFIFO) and the permission bits. */
export function mknod(path: string, mode: number, major = 0, minor = 0): void {
  const errno = addon().mknod(path, mode, major, minor);
  if (errno !== 0) throw errnoError(errno, 'mknod', path);
}

/** lsetxattr(2): sets one attribute on the entry itself (a symlink is not followed). */
export function lsetxattr(path: string, name: string, value: Buffer): void {
  const errno = addon().lsetxattr(path, name, value);
  if (errno !== 0) throw errnoError(errno, 'lsetxattr', path);
}

/** Every attribute of one entry (symlinks not followed), in the kernel's order. */
export function lxattrs(path: string): [string, Buffer][] {
  const r = addon().lxattrs(path);
  if (typeof r === 'number') throw errnoError(r, 'llistxattr', path);
  return r;
}

/**
 * Every entry at and below `root` that has extended attributes (directories walked, symlinks
 * never followed), with its path relative to `root` (`''` for `root` itself, `/`-separated) and
 * its attributes. Entries that cannot be read are skipped (as containerd and getfattr do). Runs
 * on libuv's thread pool.
 */
export async function treeXattrs(root: string): Promise<[string, [string, Buffer][]][]> {
  const r = await addon().treeXattrs(root);
  if (typeof r === 'number') throw errnoError(r, 'llistxattr', root);
  return r;
}

/** What {@link copyFiles} does to every file it copies. */
export interface CopyFilesOptions {
  /** Chown every copy: to `owner`, else to its source's owner. Default false (the creator's). */
  chown?: boolean;
  owner?: { uid: number; gid: number } | undefined;
  /** Mode bits (`& 0o7777`) of every copy; default its source's. */
  mode?: number | undefined;
  /** atime and mtime of every copy; default its source's, to the nanosecond. */
  time?: Date | undefined;
}

/** {@link copyFiles}' answer for a source that is not a regular file with a single link. */
export const COPY_OTHER = -1;

/**
 * Copies regular files `srcs[i]` to new files `dsts[i]` in one job on libuv's thread pool (a file
 * costs its syscalls, not a round trip to the event loop each): contents, then owner (with
 * `chown`), mode and times. Symlinks are never followed; a destination is created exclusively
 * (O_EXCL | O_NOFOLLOW) and removed again when the copy fails after creating it. Answers per
 * file: 0 when copied, {@link COPY_OTHER} when the source is not a regular file with one link
 * (nothing done: a symlink, a device, a file whose copies must share an inode), or the errno
 * that stopped it (`EEXIST` when something is in the way).
 */
export async function copyFiles(
  srcs: string[],
  dsts: string[],
  o: CopyFilesOptions = {},
): Promise<number[]> {
  const ms = o.time?.getTime();
  const r = await addon().copyFiles(srcs, dsts, [
    o.chown ? 1 : 0,
    o.owner?.uid ?? -1,
    o.owner?.gid ?? -1,
    o.mode === undefined ? -1 : o.mode & 0o7777,
    ms === undefined ? -1 : Math.floor(ms / 1000),
    ms === undefined ? 0 : (ms - Math.floor(ms / 1000) * 1000) * 1_000_000,
  ]);
  if (typeof r === 'number') throw errnoError(r, 'copy_file_range', srcs[0]);
  return r;
}

/** A process started by {@link spawnProcess}. */
export interface SpawnedProcess {
  /** Its pid once it runs (undefined until then, or when it could not start). */
  readonly pid: number | undefined;
  readonly stdout: Readable;
  readonly stderr: Readable;
  /**
   * Resolves once the process has exited and both pipes reached their end: `code` null when a
   * signal ended it (as `child_process`'s `close` event). Rejects with a Node-style error
   * (`syscall` `posix_spawn`) when it could not start after all (an exec that failed).
   */
  readonly closed: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /**
   * Signals the process while it runs (never a pid it no longer owns; a signal sent before it
   * runs is delivered once it does); false after its exit.
   */
  kill(signal?: NodeJS.Signals): boolean;
}

const signalNames = new Map<number, NodeJS.Signals>(
  Object.entries(constants.signals).map(([name, n]) => [n, name as NodeJS.Signals]),
);

/**
 * `file` as a path to an executable: itself when it has a slash, else the first executable
 * regular file of that name in `PATH` (as `execvp`); throws `ENOENT` or `EACCES` when none.
 */
function executablePath(file: string, path: string | undefined): string {
  const candidates = file.includes('/')
    ? [file]
    : (path ?? '/usr/local/bin:/usr/bin:/bin').split(':').map((d) => join(d || '.', file));
  let denied = false;
  for (const c of candidates) {
    try {
      if (!statSync(c).isFile()) continue;
      accessSync(c, fsConstants.X_OK);
      return c;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EACCES') denied = true;
    }
  }
  throw errnoError(denied ? constants.errno.EACCES : constants.errno.ENOENT, 'posix_spawn', file);
}

/**
 * Starts `file` (searched in `PATH` when it has no slash) with `args`, with posix_spawn (a vfork:
 * the caller's page tables are not copied), where `child_process.spawn` forks: a fork of a large
 * process blocks its event loop ~15-25 ms until the child has exec'd. The spawn itself (the wait
 * for the child's exec) happens on a thread of its own, not on the event loop. The child gets
 * stdin from /dev/null, stdout and stderr as pipes, a session of its own (as `detached: true`),
 * default signal dispositions and no blocked signal. A program that is not there, or not
 * executable, throws a Node-style error (`ENOENT`, `EACCES`, ...) with `syscall` `posix_spawn`;
 * an exec that fails later rejects `closed` with one.
 */
export function spawnProcess(
  file: string,
  args: readonly string[],
  opts: { env?: NodeJS.ProcessEnv } = {},
): SpawnedProcess {
  const env = opts.env ?? process.env;
  const path = executablePath(file, env.PATH);
  const envp = Object.entries(env)
    .filter((e): e is [string, string] => e[1] !== undefined)
    .map(([k, v]) => `${k}=${v}`);
  let pid: number | undefined;
  let pending: NodeJS.Signals | undefined;
  let exited = false;
  let onExit!: (r: { code: number | null; signal: NodeJS.Signals | null }) => void;
  let onFail!: (err: Error) => void;
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>(
    (resolve, reject) => {
      onExit = resolve;
      onFail = reject;
    },
  );
  const r = addon().spawn(path, [file, ...args], envp, (kind, a, b) => {
    if (kind === 0) {
      pid = a;
      if (pending !== undefined) process.kill(a, pending);
      return;
    }
    exited = true;
    if (kind === 1) onFail(errnoError(a, 'posix_spawn', file));
    else onExit({ code: b === 0 ? a : null, signal: signalNames.get(b) ?? null });
  });
  if (typeof r === 'number') throw errnoError(r, 'posix_spawn', file);
  const [outFd, errFd] = r;
  const stdout = new Socket({ fd: outFd, readable: true, writable: false });
  const stderr = new Socket({ fd: errFd, readable: true, writable: false });
  const ended = (s: Socket): Promise<void> =>
    new Promise((resolve) => {
      s.once('close', () => resolve());
    });
  const closed = Promise.all([exit, ended(stdout), ended(stderr)]).then(([e]) => e);
  return {
    get pid() {
      return pid;
    },
    stdout,
    stderr,
    closed,
    kill: (signal = 'SIGTERM') => {
      if (exited) return false;
      if (pid === undefined) pending = signal;
      else process.kill(pid, signal);
      return true;
    },
  };
}

/**
 * A unix stream socket bound to `path` and listening (close-on-exec); its descriptor. The socket
 * file's mode follows the umask: protect it by its directory.
 */
export function unixListen(path: string, backlog = 8): number {
  const r = addon().unixListen(path, backlog);
  if (typeof r === 'number') throw errnoError(r, 'bind', path);
  return r[0];
}

/** A connection accepted by {@link unixAccept}, with its peer's credentials (SO_PEERCRED). */
export interface UnixConnection {
  fd: number;
  uid: number;
  pid: number;
}

/**
 * Waits up to `timeoutMs` for a connection on the listening socket `fd` and accepts it, blocking
 * the calling thread (for a process with nothing else to do meanwhile); undefined when none came.
 * The connection is blocking and close-on-exec; reads and writes on it fail with EAGAIN after
 * `ioTimeoutMs` without progress, so a peer that stops talking cannot hold the caller.
 */
export function unixAccept(
  fd: number,
  timeoutMs: number,
  ioTimeoutMs: number,
): UnixConnection | undefined {
  const r = addon().unixAccept(fd, Math.max(0, timeoutMs), Math.max(1, ioTimeoutMs));
  if (r === null) return undefined;
  if (typeof r === 'number') throw errnoError(r, 'accept');
  return { fd: r[0], uid: r[1], pid: r[2] };
}

/**
 * One recvmsg(2) on a unix socket: up to `maxBytes` of data (an empty buffer at end of stream) and
 * the descriptors sent with it (SCM_RIGHTS, close-on-exec, at most `maxFds` <= 16: more fail with
 * EMSGSIZE, every received one closed).
 */
export function recvFds(
  fd: number,
  maxBytes: number,
  maxFds: number,
): { data: Buffer; fds: number[] } {
  const r = addon().recvFds(fd, maxBytes, maxFds);
  if (typeof r === 'number') throw errnoError(r, 'recvmsg');
  return { data: r[0], fds: r[1] };
}

/** dup2(2): `newFd` becomes a copy of `oldFd` (not close-on-exec). */
export function dup2(oldFd: number, newFd: number): void {
  const errno = addon().dup2(oldFd, newFd);
  if (errno !== 0) throw errnoError(errno, 'dup2');
}

/** One directory's entries, as {@link lstatDir} reads them. */
export interface DirStats {
  /** The names, sorted bytewise (as Go's filepath.Walk: UTF-8 byte order). */
  names: string[];
  /**
   * Per entry: `size\tmtime_ns\tctime_ns\tino` (decimal), what must be unchanged for a file's
   * content to be taken as unchanged.
   */
  stamps: string[];
  /** The symlinks' targets, in the order of the symlinks among `names`. */
  links: string[];
  /**
   * Six numbers per entry: st_mode, uid, gid, size, and the mtime in nanoseconds as its low
   * (unsigned) and high (signed) 32 bits.
   */
  nums: Float64Array;
}

/** NUL-terminated strings, one after the other, as an array. */
const splitNul = (s: string): string[] => {
  if (s === '') return [];
  const v = s.split('\0');
  v.pop();
  return v;
};

/**
 * Every entry of the directory `path` (not `.` and `..`) with its lstat, symlinks' targets read:
 * readdir, a sort and an fstatat per entry in one synchronous call, where `readdirSync` and
 * `lstatSync` cost a call and a Stats object (with its Dates) per entry. Throws a Node-style
 * error: the directory's (`opendir`), or an entry's (`lstat`, `readlink`, with its path) when it
 * vanished or cannot be read meanwhile.
 */
export function lstatDir(path: string): DirStats {
  const r = addon().lstatDir(path);
  if (typeof r === 'number') throw errnoError(r, 'opendir', path);
  if (typeof r[0] === 'number') {
    const name = r[1];
    throw errnoError(r[0], 'lstat', `${path}${path.endsWith('/') ? '' : '/'}${name}`);
  }
  const [names, stamps, links, nums] = r as [string, string, string, Float64Array];
  return { names: splitNul(names), stamps: splitNul(stamps), links: splitNul(links), nums };
}
