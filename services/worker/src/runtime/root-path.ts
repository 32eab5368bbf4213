import { lstat, readlink } from 'node:fs/promises';
import { join } from 'node:path';

const MAX_SYMLINKS = 255;

/**
 * The host path of `path` inside `root`, with every symlink on the way resolved as if `root` were
 * `/` (continuity's `fs.RootPath`): absolute targets are re-rooted and `..` stops at the root, so
 * the result is always inside `root`. Missing components are kept as they are. The last component
 * is resolved too.
 */
export async function rootPath(root: string, path: string): Promise<string> {
  const queue = path.split('/');
  const real: string[] = [];
  let hops = 0;
  while (queue.length > 0) {
    const c = queue.shift()!;
    if (c === '' || c === '.') continue;
    if (c === '..') {
      real.pop();
      continue;
    }
    const p = join(root, ...real, c);
    let isLink = false;
    try {
      isLink = (await lstat(p)).isSymbolicLink();
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw err;
    }
    if (!isLink) {
      real.push(c);
      continue;
    }
    if (++hops > MAX_SYMLINKS) throw new Error(`too many symlinks resolving ${path}`);
    const target = await readlink(p);
    if (target.startsWith('/')) real.length = 0;
    queue.unshift(...target.split('/'));
  }
  return join(root, ...real);
}
