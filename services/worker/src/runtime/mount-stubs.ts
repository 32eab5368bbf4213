import { lstat, readdir, rmdir, unlink, utimes } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { resolveInRoot } from '@kiln/layers';

/**
 * Records which mount targets do not exist in `rootfs` before a run (the runtime creates them as
 * empty files or directories), and returns a function that removes those that are still empty
 * afterwards, restoring their parent's timestamps, as BuildKit's `MountStubsCleaner`. With
 * `recursive`, missing parents are removed too. Call the cleaner while the rootfs is still mounted.
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
      if (await exists(real)) break;
      paths.push(real);
      const parent = dirname(real);
      if (!parents.has(parent)) parents.set(parent, await dirState(parent));
      if (!recursive) break;
      const next = dirname(real);
      if (next === real || next === rootfs || !next.startsWith(`${rootfs}/`)) break;
      real = next;
    }
  }
  return async () => {
    for (const p of paths) {
      let st;
      try {
        st = await lstat(p);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw err;
      }
      if (st.isDirectory()) {
        if ((await readdir(p)).length !== 0) continue;
      } else if (!st.isFile() || st.size !== 0) {
        continue;
      }
      const parent = dirname(p);
      const pst = await lstat(parent);
      try {
        if (st.isDirectory()) await rmdir(p);
        else await unlink(p);
      } catch (err) {
        // another run on the same tree removed it first, or the process filled it meanwhile
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' || code === 'ENOTEMPTY' || code === 'EBUSY') continue;
        throw err;
      }
      const before = parents.get(parent);
      const names = (await readdir(parent)).sort();
      if (
        before !== undefined &&
        names.length === before.names.length &&
        names.every((n, i) => n === before.names[i])
      ) {
        await utimes(parent, before.atime, before.mtime);
      } else {
        await utimes(parent, pst.atime, pst.mtime);
      }
    }
  };
}

async function dirState(
  dir: string,
): Promise<{ atime: number; mtime: number; names: string[] } | undefined> {
  try {
    const st = await lstat(dir);
    if (!st.isDirectory()) return undefined;
    return {
      atime: st.atimeMs / 1000,
      mtime: st.mtimeMs / 1000,
      names: (await readdir(dir)).sort(),
    };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw err;
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await lstat(p);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return false;
    throw err;
  }
}
