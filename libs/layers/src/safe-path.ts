import { lstat, mkdir, readlink } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { join } from 'node:path';
import { LayerError, LayerErrorCode } from './errors.js';

/** Symlinks followed while resolving one path, as Linux's MAXSYMLINKS. */
const MAX_SYMLINK_HOPS = 40;

/**
 * Splits a tar entry name (or hardlink target) into clean components. Absolute names and any `..`
 * component are unsafe: a layer names paths relative to its root and never climbs out of it.
 */
export function entryComponents(name: string, entry: string = name): string[] {
  if (name.includes('\0'))
    throw new LayerError(LayerErrorCode.Invalid, 'NUL byte in path', { entry });
  if (name.startsWith('/')) {
    throw new LayerError(LayerErrorCode.Unsafe, 'absolute path in layer', {
      entry,
      details: { path: name },
    });
  }
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) {
    throw new LayerError(LayerErrorCode.Unsafe, '".." in layer path', {
      entry,
      details: { path: name },
    });
  }
  return parts;
}

export async function lstatOrUndefined(path: string): Promise<Stats | undefined> {
  try {
    return await lstat(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw err;
  }
}

export interface ResolveOptions {
  /** Create missing directories (mode 0755) on the way; otherwise resolve to undefined. */
  create: boolean;
}

/**
 * Resolves a directory path given as components relative to `root` to a real host path inside
 * `root`, walking it one component at a time as the kernel would. A symlink met on the way is
 * followed only while it stays inside `root`: an absolute target, or a `..` that climbs above
 * `root`, is {@link LayerErrorCode.Unsafe} (containerd re-roots absolute targets instead; a layer
 * produced by a differ never writes through a symlink, so refusing costs nothing legitimate).
 * The result contains no symlinks, so creating an entry in it cannot land outside `root` as long
 * as nobody else modifies the tree concurrently.
 */
export async function resolveDirInRoot(
  root: string,
  components: readonly string[],
  entry: string,
  opts: ResolveOptions,
): Promise<string | undefined> {
  const real: string[] = [];
  const queue = [...components];
  let hops = 0;
  while (queue.length > 0) {
    const c = queue.shift()!;
    if (c === '' || c === '.') continue;
    if (c === '..') {
      if (real.length === 0) {
        throw new LayerError(
          LayerErrorCode.Unsafe,
          'path leads outside the root through a symlink',
          { entry },
        );
      }
      real.pop();
      continue;
    }
    const p = join(root, ...real, c);
    const st = await lstatOrUndefined(p);
    if (st === undefined) {
      if (!opts.create) return undefined;
      await mkdir(p, { mode: 0o755 });
      real.push(c);
      continue;
    }
    if (st.isDirectory()) {
      real.push(c);
      continue;
    }
    if (st.isSymbolicLink()) {
      if (++hops > MAX_SYMLINK_HOPS) {
        throw new LayerError(LayerErrorCode.Unsafe, 'too many levels of symlinks', { entry });
      }
      const target = await readlink(p);
      if (target.startsWith('/')) {
        throw new LayerError(
          LayerErrorCode.Unsafe,
          'path goes through a symlink to an absolute target',
          {
            entry,
            details: { symlink: join(...real, c), target },
          },
        );
      }
      queue.unshift(...target.split('/'));
      continue;
    }
    throw new LayerError(LayerErrorCode.Invalid, 'parent path is not a directory', {
      entry,
      details: { path: join(...real, c) },
    });
  }
  return join(root, ...real);
}
