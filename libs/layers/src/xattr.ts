/**
 * Extended attributes through `@kiln/sys` (llistxattr/lgetxattr/lsetxattr: Node has no xattr
 * API). Symlinks are never followed. A tree is read by one walk on libuv's thread pool.
 *
 * Values are exact bytes; names and paths are decoded as UTF-8, as the rest of the worker does
 * with file names.
 */
import type { BigIntStats } from 'node:fs';
import { lstat, realpath } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { lsetxattr, treeXattrs } from '@kiln/sys';

/** An entry's extended attributes: name -> raw value. */
export type Xattrs = ReadonlyMap<string, Buffer>;

/** The Linux limits (`XATTR_NAME_MAX`, `XATTR_SIZE_MAX`). */
export const XATTR_NAME_MAX = 255;
export const XATTR_SIZE_MAX = 65536;

/**
 * Attributes that never travel: overlayfs's own markers (`trusted.overlay.*`: opaque dirs,
 * redirects, origins; meaningless or harmful outside their upper dir; `user.overlay.*` where it
 * is mounted with `userxattr`, in a user namespace) and SELinux labels, which belong to the
 * host's policy (BuildKit does not carry them either).
 */
export function isSkippedXattr(name: string): boolean {
  return (
    name.startsWith('trusted.overlay.') ||
    name.startsWith('user.overlay.') ||
    name === 'security.selinux'
  );
}

function sortedXattrs(m: Map<string, Buffer>): Xattrs {
  const names = [...m.keys()].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  return new Map(names.map((n) => [n, m.get(n)!]));
}

/**
 * Every extended attribute at and below `path` (a directory is read recursively, symlinks are not
 * followed), keyed by path relative to `path` (`''` for `path` itself, `/`-separated), names in
 * byte order. Entries without attributes are absent. Skipped names ({@link isSkippedXattr}) are
 * left out; an entry that cannot be read is skipped (as containerd does). One `getfattr` process.
 */
export async function readTreeXattrs(path: string): Promise<Map<string, Xattrs>> {
  let abs = resolve(path);
  if (abs.length > 1 && abs.endsWith('/')) abs = abs.slice(0, -1);
  const out = new Map<string, Xattrs>();
  for (const [rel, attrs] of await treeXattrs(abs)) {
    const kept = new Map<string, Buffer>();
    for (const [name, value] of attrs) if (!isSkippedXattr(name)) kept.set(name, value);
    if (kept.size > 0) out.set(rel, sortedXattrs(kept));
  }
  return out;
}

/** Attributes to set on one entry; make it with {@link xattrTarget} right after the entry. */
export interface XattrTarget {
  /** Absolute host path, its parent a real path (no symlink on the way). */
  path: string;
  xattrs: Xattrs;
  /** The entry's inode when the target was made. */
  stat: Pick<BigIntStats, 'dev' | 'ino'>;
}

/**
 * A target for the entry at `path` as it is now: its parent resolved to a real path and its
 * inode recorded, so that {@link writeXattrs} can tell whether the path still leads to it.
 */
export async function xattrTarget(path: string, xattrs: Xattrs): Promise<XattrTarget> {
  const real = join(await realpath(dirname(path)), basename(path));
  return { path: real, xattrs, stat: await lstat(real, { bigint: true }) };
}

/** What {@link writeXattrs} could not set. */
export interface XattrWriteResult {
  /** Targets skipped because their path no longer leads to their inode. */
  skipped: string[];
  /** Attributes the kernel refused: the entry, the attribute and the errno code (`ENOTSUP`...). */
  errors: { path: string; name: string; code: string }[];
}

/**
 * Sets `targets`' attributes with lsetxattr (a symlink gets its own attributes, never its
 * target's). Each target is checked first: its parent must still be a real path (no symlink
 * swapped in on the way) and its path must still be its inode, so that nothing but the entry that
 * was made gets attributes; otherwise it is skipped. Names must be valid (see
 * {@link validXattrName}); skipped names are not written. Errors of single attributes are
 * returned, not thrown.
 */
export async function writeXattrs(targets: readonly XattrTarget[]): Promise<XattrWriteResult> {
  const result: XattrWriteResult = { skipped: [], errors: [] };
  for (const t of targets) {
    const names = [...t.xattrs.keys()].filter((n) => !isSkippedXattr(n));
    if (names.length === 0) continue;
    for (const n of names) {
      if (!validXattrName(n)) throw new Error(`invalid xattr name ${JSON.stringify(n)}`);
    }
    if (!(await unchanged(t))) {
      result.skipped.push(t.path);
      continue;
    }
    for (const n of names) {
      try {
        lsetxattr(t.path, n, t.xattrs.get(n)!);
      } catch (err) {
        result.errors.push({
          path: t.path,
          name: n,
          code: (err as NodeJS.ErrnoException).code ?? '',
        });
      }
    }
  }
  return result;
}

/** A name the kernel can take: non-empty, at most 255 bytes, no NUL. */
export function validXattrName(name: string): boolean {
  const n = Buffer.byteLength(name);
  return n > 0 && n <= XATTR_NAME_MAX && !name.includes('\0');
}

async function unchanged(t: XattrTarget): Promise<boolean> {
  try {
    const parent = dirname(t.path);
    if ((await realpath(parent)) !== parent) return false;
    const st = await lstat(t.path, { bigint: true });
    return st.dev === t.stat.dev && st.ino === t.stat.ino;
  } catch {
    return false;
  }
}
