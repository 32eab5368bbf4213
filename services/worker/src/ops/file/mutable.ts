import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { cloneTree } from '../../fs/index.js';
import type { MutableFactory } from './execute.js';

/**
 * The plain-copy {@link MutableFactory}: each target is a new directory under `scratchDir` holding
 * a full copy of `from` (see `cloneTree`: modes, owners, links, times, the root's own metadata).
 * `discard` removes such a directory.
 */
export function copyingMutable(scratchDir: string): {
  mutable: MutableFactory;
  discard: (dir: string) => Promise<void>;
} {
  return {
    mutable: async (from) => {
      const dir = await mkdtemp(join(scratchDir, 'fileop-'));
      if (from === undefined) await chmod(dir, 0o755);
      else await cloneTree(from, dir);
      return dir;
    },
    discard: (dir) => rm(dir, { recursive: true, force: true }),
  };
}
