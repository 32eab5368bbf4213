import { lstatSync, readlinkSync } from 'node:fs';
import type { Stats } from 'node:fs';
import { posix } from 'node:path';
import { FsError, FsErrorCode, errnoOf } from './fs-errors.js';

/** Symlinks followed while resolving one path before giving up (moby/sys/symlink's limit). */
export const MAX_SYMLINKS = 255;

export interface ResolveOptions {
  /**
   * Follow a symlink in the last component too (default true). When false the result names the
   * link itself; only its parent directories are resolved.
   */
  followFinal?: boolean;
}

/**
 * Cleans `p` as an absolute path inside a root: `.` and empty components dropped, `..` applied
 * lexically and clamped at `/`. Always starts with `/`; no trailing slash except for `/` itself.
 */
export function cleanRootPath(p: string): string {
  return posix.normalize(`/${p}`).replace(/(.)\/+$/, '$1');
}

/**
 * Resolves `path` (absolute or not, always taken relative to `root`) to a host path inside `root`,
 * as if `root` were `/` (BuildKit's `FollowSymlinkInScope` / continuity's `RootPath`): every
 * component is walked in turn; a symlink is replaced by its target, an absolute target restarting
 * from `root` and a relative one from the link's directory; `..` never climbs above `root`.
 * Missing components are accepted (the result may not exist). The result contains no symlink
 * except, with `followFinal: false`, in its last component; so as long as nobody else changes the
 * tree meanwhile, an operation on it that does not follow a final symlink stays inside `root`.
 *
 * `root` must itself be a real path (no symlinks), e.g. from `fs.realpath`.
 * Throws {@link FsErrorCode.SymlinkLoop} after {@link MAX_SYMLINKS} links.
 */
export function resolveInRoot(
  root: string,
  path: string,
  opts: ResolveOptions = {},
): Promise<string> {
  return promised(() => resolveInRootSync(root, path, opts));
}

/** `fn`'s value as a promise; what it throws, as a rejection. */
function promised<T>(fn: () => T): Promise<T> {
  return new Promise((resolve) => resolve(fn()));
}

/**
 * {@link resolveInRoot} made synchronously: an lstat per component, on metadata the kernel has
 * cached, costs microseconds; the same calls through the thread pool cost a round trip each
 * (see `sync-fs.ts`).
 */
export function resolveInRootSync(root: string, path: string, opts: ResolveOptions = {}): string {
  const rootClean = posix.normalize(root).replace(/(.)\/+$/, '$1');
  const rel = resolveRelSync(rootClean, path, opts.followFinal ?? true);
  return rel === '/' ? rootClean : rootClean === '/' ? rel : rootClean + rel;
}

/** Like {@link resolveInRoot} but returns the resolved path relative to the root, starting with `/`. */
export function resolveRel(root: string, path: string, followFinal = true): Promise<string> {
  return promised(() => resolveRelSync(root, path, followFinal));
}

/** {@link resolveRel} made synchronously. */
export function resolveRelSync(root: string, path: string, followFinal = true): string {
  if (!followFinal) {
    const clean = cleanRootPath(path);
    if (clean === '/') return '/';
    const parent = resolveRelSync(root, posix.dirname(clean), true);
    return posix.join(parent, posix.basename(clean));
  }
  // `done` holds the components already resolved (none of them a symlink); `todo` what is left.
  const done: string[] = [];
  let todo = splitComponents(path);
  let links = 0;
  while (todo.length > 0) {
    const c = todo.shift()!;
    if (c === '.' || c === '') continue;
    if (c === '..') {
      done.pop();
      continue;
    }
    const rel = `/${[...done, c].join('/')}`;
    const full = root === '/' ? rel : root + rel;
    let isLink: boolean;
    try {
      isLink = lstatSync(full).isSymbolicLink();
    } catch (err) {
      const code = errnoOf(err);
      // Missing (or under a non-directory): accepted here; the operation on the path will fail.
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw err;
      isLink = false;
    }
    if (!isLink) {
      done.push(c);
      continue;
    }
    if (++links > MAX_SYMLINKS) {
      throw new FsError(FsErrorCode.SymlinkLoop, 'too many levels of symbolic links', {
        path: cleanRootPath(path),
      });
    }
    const target = readlinkSync(full);
    if (target.startsWith('/')) done.length = 0;
    todo = [...splitComponents(target), ...todo];
  }
  return `/${done.join('/')}`;
}

function splitComponents(p: string): string[] {
  return p.split('/').filter((c) => c !== '' && c !== '.');
}

/** `path` relative to `root` for messages: `/` + the part below root (host prefix removed). */
export function displayPath(root: string, path: string): string {
  if (path === root) return '/';
  return path.startsWith(`${root}/`) ? path.slice(root.length) : path;
}

/** lstat, or undefined when the path (or a parent) does not exist. */
export function lstatOrUndefined(path: string): Promise<Stats | undefined> {
  return promised(() => lstatOrUndefinedSync(path));
}

/** {@link lstatOrUndefined} made synchronously. */
export function lstatOrUndefinedSync(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch (err) {
    const code = errnoOf(err);
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw err;
  }
}
