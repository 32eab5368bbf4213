/**
 * Filesystem operations confined to a root. Every path argument is relative to `root` (a leading
 * `/` is the root) and is resolved with {@link resolveInRoot} first; nothing here ever follows a
 * symlink out of the root. Concurrent modification of the tree by someone else is out of scope.
 */
import { constants } from 'node:fs';
import { chmod, lchown, lstat, lutimes, mkdir, open, rm } from 'node:fs/promises';
import { posix } from 'node:path';
import {
  FsError,
  FsErrorCode,
  cleanRootPath,
  displayPath,
  lstatOrUndefined,
  resolveInRoot,
} from '@kiln/layers';

/** Numeric owner of a file. */
export interface Owner {
  uid: number;
  gid: number;
}

/** Metadata applied to what an operation creates. */
export interface CreateMeta {
  /** Permission bits (and setuid/setgid/sticky) set exactly, regardless of the process umask. */
  mode: number;
  /** Owner of created entries; default: left as created (the process's). */
  owner?: Owner | undefined;
  /** atime and mtime of created entries; default: now. */
  time?: Date | undefined;
}

/** Applies owner, mode and time to a just-created host path (not following a final symlink). */
export async function applyMeta(
  path: string,
  meta: Partial<CreateMeta>,
  isSymlink = false,
): Promise<void> {
  if (meta.owner !== undefined) await lchown(path, meta.owner.uid, meta.owner.gid);
  // After chown, which clears setuid/setgid. Symlinks have no mode of their own on Linux.
  if (meta.mode !== undefined && !isSymlink) await chmod(path, meta.mode);
  if (meta.time !== undefined) await lutimes(path, meta.time, meta.time);
}

/**
 * `mode` plus the setgid bit a directory just made inherited from its parent (the kernel sets it
 * in a setgid directory): BuildKit makes directories with `os.Mkdir` and sets no mode afterwards,
 * so WORKDIR and COPY parents under a setgid directory keep it (and its group).
 */
async function withInheritedSetgid(dir: string, mode: number): Promise<number> {
  return mode | ((await lstat(dir)).mode & 0o2000);
}

/**
 * Creates host directory `hostPath` (already resolved inside `root`) and its missing parents,
 * like fsutil's `MkdirAll`: each directory created gets `meta`; existing ones are left alone.
 * Returns the host paths created, outermost first.
 */
export async function mkdirAllResolved(
  root: string,
  hostPath: string,
  meta: CreateMeta,
): Promise<string[]> {
  if (hostPath === root) return [];
  if (!hostPath.startsWith(`${root}/`))
    throw new FsError(FsErrorCode.Unsafe, 'path is outside the root', { path: hostPath });
  const rel = hostPath.slice(root.length);
  const created: string[] = [];
  let cur = root;
  for (const c of rel.split('/').filter((x) => x !== '')) {
    cur = cur === '/' ? `/${c}` : `${cur}/${c}`;
    const st = await lstatOrUndefined(cur);
    if (st?.isDirectory()) continue;
    if (st !== undefined) {
      throw new FsError(FsErrorCode.Conflict, 'not a directory', { path: displayPath(root, cur) });
    }
    await mkdir(cur, { mode: 0o700 });
    await applyMeta(cur, { mode: await withInheritedSetgid(cur, meta.mode), owner: meta.owner });
    created.push(cur);
  }
  // Times last: creating a child changes its parent's mtime.
  if (meta.time !== undefined)
    for (const c of [...created].reverse()) await applyMeta(c, { time: meta.time });
  return created;
}

/** {@link mkdirAllResolved} for a root-relative path (symlinks followed inside the root). */
export async function mkdirAll(root: string, path: string, meta: CreateMeta): Promise<string> {
  const host = await resolveInRoot(root, path);
  await mkdirAllResolved(root, host, meta);
  return host;
}

/**
 * Creates one directory; its parent must exist. Anything already at the path is left unchanged,
 * like BuildKit's mkdir without makeParents (which ignores EEXIST).
 */
export async function mkdirOne(root: string, path: string, meta: CreateMeta): Promise<string> {
  const host = await resolveInRoot(root, path);
  if ((await lstatOrUndefined(host)) !== undefined) return host;
  const parent = await lstatOrUndefined(posix.dirname(host));
  if (parent === undefined)
    throw new FsError(FsErrorCode.NotFound, 'parent directory does not exist', { path });
  if (!parent.isDirectory())
    throw new FsError(FsErrorCode.Conflict, 'parent is not a directory', { path });
  await mkdir(host, { mode: 0o700 });
  await applyMeta(host, { ...meta, mode: await withInheritedSetgid(host, meta.mode) });
  return host;
}

/**
 * Writes `data` to a file (a final symlink is followed inside the root, as `os.WriteFile` would).
 * A new file gets `meta.mode`; an existing one is truncated and keeps its mode, as in BuildKit.
 * Owner and time are applied in both cases.
 */
export async function writeFileInRoot(
  root: string,
  path: string,
  data: Uint8Array,
  meta: CreateMeta,
): Promise<string> {
  const host = await resolveInRoot(root, path);
  const before = await lstatOrUndefined(host);
  if (before?.isDirectory())
    throw new FsError(FsErrorCode.Conflict, 'is a directory', { path: cleanRootPath(path) });
  const fh = await open(
    host,
    constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW,
    0o600,
  );
  try {
    await fh.writeFile(data);
  } finally {
    await fh.close();
  }
  await applyMeta(host, {
    owner: meta.owner,
    time: meta.time,
    mode: before === undefined ? meta.mode : undefined,
  });
  return host;
}

/**
 * Removes a path and everything below it (a final symlink is removed, not followed). Missing:
 * {@link FsErrorCode.NotFound} unless `allowNotFound`. The root itself cannot be removed.
 */
export async function removeInRoot(
  root: string,
  path: string,
  allowNotFound: boolean,
): Promise<void> {
  const clean = cleanRootPath(path);
  if (clean === '/') throw new FsError(FsErrorCode.Unsafe, 'cannot remove the root', { path });
  const host = await resolveInRoot(root, clean, { followFinal: false });
  if (host === root) throw new FsError(FsErrorCode.Unsafe, 'cannot remove the root', { path });
  const st = await lstatOrUndefined(host);
  if (st === undefined) {
    if (allowNotFound) return;
    throw new FsError(FsErrorCode.NotFound, 'no such file or directory', { path: clean });
  }
  await rm(host, { recursive: true, force: true });
}

/** Sets atime and mtime of a host path, not following a final symlink. */
export async function setTimes(
  hostPath: string,
  atime: Date | number,
  mtime: Date | number,
): Promise<void> {
  await lutimes(hostPath, atime, mtime);
}

/** Options of the single-entry metadata operations below. */
export interface EntryOptions {
  /** Act on what a final symlink points to (resolved inside the root) rather than on the link. Default false. */
  followFinal?: boolean;
}

async function existingInRoot(root: string, path: string, followFinal: boolean): Promise<string> {
  const host = await resolveInRoot(root, path, { followFinal });
  if ((await lstatOrUndefined(host)) === undefined) {
    throw new FsError(FsErrorCode.NotFound, 'no such file or directory', {
      path: cleanRootPath(path),
    });
  }
  return host;
}

/** Changes the owner of a path inside `root` (the link itself unless `followFinal`). Returns the host path. */
export async function lchownInRoot(
  root: string,
  path: string,
  owner: Owner,
  opts: EntryOptions = {},
): Promise<string> {
  const host = await existingInRoot(root, path, opts.followFinal ?? false);
  await lchown(host, owner.uid, owner.gid);
  return host;
}

/**
 * Changes the mode of a path inside `root`. Linux symlinks have no mode of their own, so a final
 * symlink is always followed, inside the root. Returns the host path changed.
 */
export async function chmodInRoot(root: string, path: string, mode: number): Promise<string> {
  const host = await existingInRoot(root, path, true);
  await chmod(host, mode & 0o7777);
  return host;
}

/** Sets atime and mtime of a path inside `root` (the link itself unless `followFinal`). Returns the host path. */
export async function utimesInRoot(
  root: string,
  path: string,
  atime: Date | number,
  mtime: Date | number,
  opts: EntryOptions = {},
): Promise<string> {
  const host = await existingInRoot(root, path, opts.followFinal ?? false);
  await lutimes(host, atime, mtime);
  return host;
}
