import { createHash } from 'node:crypto';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';

/** BuildKit's cache sharing modes (pb.CacheSharingOpt). */
export type CacheSharing = 'shared' | 'private' | 'locked';

/** A cache directory in use; `release` exactly once when the run is over. */
export interface CacheMountHandle {
  readonly path: string;
  /** True when the directory was created for this use (seed it from the mount's input, if any). */
  readonly created: boolean;
  release(): void;
}

interface DirState {
  users: number;
  exclusive: boolean;
  waiters: Array<() => void>;
}

/**
 * Persistent cache directories (`RUN --mount=type=cache`), one set per cache id under `root`,
 * surviving runs and worker restarts. `shared`: every run uses the main directory at once.
 * `private`: the main directory when nobody uses it, else another directory of the same id that is
 * free (made when none is). `locked`: the main directory, exclusively; later runs wait in order.
 * Locks are in-process: one worker owns its state dir.
 */
export class CacheMounts {
  private readonly dirs = new Map<string, DirState>();

  constructor(private readonly root: string) {}

  async acquire(id: string, sharing: CacheSharing): Promise<CacheMountHandle> {
    const base = join(this.root, createHash('sha256').update(id).digest('hex').slice(0, 32));
    if (sharing === 'private') {
      for (let i = 0; ; i++) {
        const dir = join(base, String(i));
        const st = this.state(dir);
        if (st.users === 0 && st.waiters.length === 0) {
          st.users++;
          st.exclusive = true;
          return this.handle(dir, st, await ensureDir(dir));
        }
      }
    }
    const dir = join(base, '0');
    const st = this.state(dir);
    const exclusive = sharing === 'locked';
    while (st.exclusive || (exclusive && st.users > 0)) {
      await new Promise<void>((resolve) => st.waiters.push(resolve));
    }
    st.users++;
    st.exclusive = exclusive;
    try {
      return this.handle(dir, st, await ensureDir(dir));
    } catch (err) {
      this.done(st);
      throw err;
    }
  }

  /** Removes every directory of cache `id` that is not in use. */
  async prune(id: string): Promise<void> {
    const base = join(this.root, createHash('sha256').update(id).digest('hex').slice(0, 32));
    for (const [dir, st] of this.dirs) if (dir.startsWith(`${base}/`) && st.users > 0) return;
    await rm(base, { recursive: true, force: true });
  }

  private state(dir: string): DirState {
    let st = this.dirs.get(dir);
    if (st === undefined) {
      st = { users: 0, exclusive: false, waiters: [] };
      this.dirs.set(dir, st);
    }
    return st;
  }

  private handle(path: string, st: DirState, created: boolean): CacheMountHandle {
    let released = false;
    return {
      path,
      created,
      release: () => {
        if (released) return;
        released = true;
        this.done(st);
      },
    };
  }

  private done(st: DirState): void {
    st.users--;
    if (st.users === 0) st.exclusive = false;
    const waiters = st.waiters.splice(0);
    for (const w of waiters) w();
  }
}

/** Makes `dir` if missing (atomically, via a temp dir); true when it was made now. */
async function ensureDir(dir: string): Promise<boolean> {
  try {
    await stat(dir);
    return false;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const tmp = `${dir}.new`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true, mode: 0o755 });
  await rename(tmp, dir);
  return true;
}
