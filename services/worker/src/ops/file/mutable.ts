import { lchown, lstat, lutimes, chmod, mkdtemp, realpath, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { copyPath } from '../../fs/index.js';
import type { MutableFactory } from './execute.js';

/**
 * The plain-copy {@link MutableFactory}: each target is a new directory under `scratchDir` holding
 * a full copy of `from` (modes, owners, links, times; the root directory's own metadata too).
 * `discard` removes such a directory.
 */
export function copyingMutable(scratchDir: string): {
  mutable: MutableFactory;
  discard: (dir: string) => Promise<void>;
} {
  return {
    mutable: async (from) => {
      const dir = await mkdtemp(join(scratchDir, 'fileop-'));
      if (from === undefined) {
        await chmod(dir, 0o755);
        return dir;
      }
      const src = await realpath(from);
      await copyPath(src, '/', await realpath(dir), '/', { copyDirContents: true });
      const st = await lstat(src);
      if (process.getuid?.() === 0) await lchown(dir, st.uid, st.gid);
      await chmod(dir, st.mode & 0o7777);
      await lutimes(dir, st.atime, st.mtime);
      return dir;
    },
    discard: (dir) => rm(dir, { recursive: true, force: true }),
  };
}
