import { lstatSync, readdirSync, utimesSync } from 'node:fs';
import type { Stats } from 'node:fs';
import { rmdir, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { resolveInRoot } from '@kiln/layers';

/**
 * Records which mount targets do not exist in `rootfs` before a run (the runtime creates them as
 * empty files or directories), and returns a function that removes those that are still empty
 * afterwards, restoring their parent's timestamps, as BuildKit's `MountStubsCleaner`. With
 * `recursive`, missing parents are removed too. Call the cleaner while the rootfs is still mounted.
 *
 * The checks are synchronous calls: a few lstats and readdirs of directories the kernel has
 * cached cost microseconds, where each one through the thread pool cost a round trip of the
 * worker's event loop (2-10 ms in all per RUN, on its critical path, before and after the
 * container). The removals go through the thread pool, at once (see `remove`).
 */
export async function mountStubsCleaner(
  rootfs: string,
  destinations: readonly string[],
  recursive: boolean,
): Promise<() => Promise<void>> {
  const paths: string[] = [];
  // The parents of the stubs as they were before the run: their timestamps are put back after the
  // stubs are removed when nothing else in them changed, so a run leaves no trace of its mounts.
  const parents = new Map<string, { atime: number; mtime: number; names: string[] } | undefined>();
  for (const d of ['/etc/resolv.conf', '/etc/hosts', ...destinations]) {
    const p = join('/', d);
    if (p === '/') continue;
    let real = await resolveInRoot(rootfs, p);
    for (;;) {
      if (exists(real)) break;
      paths.push(real);
      const parent = dirname(real);
      if (!parents.has(parent)) parents.set(parent, dirState(parent));
      if (!recursive) break;
      const next = dirname(real);
      if (next === real || next === rootfs || !next.startsWith(`${rootfs}/`)) break;
      real = next;
    }
  }
  /** Removes stub `p` if it is still an empty directory or file; whether it did. */
  const remove = async (p: string): Promise<boolean> => {
    let st;
    try {
      st = lstatSync(p);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
    if (st.isDirectory()) {
      if (readdirSync(p).length !== 0) return false;
    } else if (!st.isFile() || st.size !== 0) {
      return false;
    }
    try {
      // Through the thread pool: right after the container, an rmdir on overlayfs can wait for
      // the container's mount namespace to go (milliseconds).
      if (st.isDirectory()) await rmdir(p);
      else await unlink(p);
      return true;
    } catch (err) {
      // another run on the same tree removed it first, or the process filled it meanwhile
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTEMPTY' || code === 'EBUSY') return false;
      throw err;
    }
  };
  /** Puts back the times `parent` had before the run, or else `after` (before the removals). */
  const restore = (parent: string, after: Stats): void => {
    const before = parents.get(parent);
    const names = readdirSync(parent).sort();
    if (
      before !== undefined &&
      names.length === before.names.length &&
      names.every((n, i) => n === before.names[i])
    ) {
      utimesSync(parent, before.atime, before.mtime);
    } else {
      utimesSync(parent, after.atime, after.mtime);
    }
  };
  /** The parent's stat now, when it exists. */
  const statOf = (parent: string): Stats | undefined => {
    try {
      return lstatSync(parent);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  };
  // A stub with another one above or below it (a missing parent, recursive or not) waits for
  // the ones before it, in order: which of them are empty depends on that order. The others are
  // removed at once.
  const related = (a: string, b: string): boolean =>
    a !== b && (a.startsWith(`${b}/`) || b.startsWith(`${a}/`));
  const chained = new Set(paths.filter((p) => paths.some((q) => related(p, q))));
  const alone = paths.filter((p) => !chained.has(p));
  return async () => {
    const after = new Map<string, Stats | undefined>();
    for (const p of alone) if (!after.has(dirname(p))) after.set(dirname(p), statOf(dirname(p)));
    const removed = await Promise.all(alone.map(remove));
    for (const parent of new Set(alone.filter((_, i) => removed[i]).map((p) => dirname(p)))) {
      const st = after.get(parent);
      if (st !== undefined) restore(parent, st);
    }
    for (const p of paths) {
      if (!chained.has(p)) continue;
      const st = statOf(dirname(p));
      if ((await remove(p)) && st !== undefined) restore(dirname(p), st);
    }
  };
}

function dirState(dir: string): { atime: number; mtime: number; names: string[] } | undefined {
  try {
    const st = lstatSync(dir);
    if (!st.isDirectory()) return undefined;
    return {
      atime: st.atimeMs / 1000,
      mtime: st.mtimeMs / 1000,
      names: readdirSync(dir).sort(),
    };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw err;
  }
}

function exists(p: string): boolean {
  try {
    lstatSync(p);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return false;
    throw err;
  }
}
