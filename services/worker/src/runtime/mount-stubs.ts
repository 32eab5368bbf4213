import { lstatSync, readdirSync, rmdirSync, unlinkSync, utimesSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { resolveInRoot } from '@kiln/layers';

/**
 * Records which mount targets do not exist in `rootfs` before a run (the runtime creates them as
 * empty files or directories), and returns a function that removes those that are still empty
 * afterwards, restoring their parent's timestamps, as BuildKit's `MountStubsCleaner`. With
 * `recursive`, missing parents are removed too. Call the cleaner while the rootfs is still mounted.
 *
 * The checks and removals are synchronous calls: a few lstats and readdirs of directories the
 * kernel has cached cost microseconds, where each one through the thread pool cost a round trip
 * of the worker's event loop (2-10 ms in all per RUN, on its critical path, before and after the
 * container).
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
  const clean = (): void => {
    for (const p of paths) {
      let st;
      try {
        st = lstatSync(p);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw err;
      }
      if (st.isDirectory()) {
        if (readdirSync(p).length !== 0) continue;
      } else if (!st.isFile() || st.size !== 0) {
        continue;
      }
      const parent = dirname(p);
      const pst = lstatSync(parent);
      try {
        if (st.isDirectory()) rmdirSync(p);
        else unlinkSync(p);
      } catch (err) {
        // another run on the same tree removed it first, or the process filled it meanwhile
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' || code === 'ENOTEMPTY' || code === 'EBUSY') continue;
        throw err;
      }
      const before = parents.get(parent);
      const names = readdirSync(parent).sort();
      if (
        before !== undefined &&
        names.length === before.names.length &&
        names.every((n, i) => n === before.names[i])
      ) {
        utimesSync(parent, before.atime, before.mtime);
      } else {
        utimesSync(parent, pst.atime, pst.mtime);
      }
    }
  };
  // What it throws, as a rejection.
  return () => new Promise<void>((resolve) => resolve(clean()));
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
