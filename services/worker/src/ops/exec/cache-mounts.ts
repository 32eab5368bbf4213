import { createHash } from 'node:crypto';
import { mkdir, readdir, rename, rm, stat, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { diskUsage } from '../../snapshot/base.js';

/** BuildKit's cache sharing modes (pb.CacheSharingOpt). */
export type CacheSharing = 'shared' | 'private' | 'locked';

/** A cache directory in use; `release` exactly once when the run is over. */
export interface CacheMountHandle {
  readonly path: string;
  /** True when the directory was created for this use (seed it from the mount's input, if any). */
  readonly created: boolean;
  release(): void | Promise<void>;
}

/** A directory of this worker's; its release is immediate. */
export interface LocalCacheMountHandle extends CacheMountHandle {
  release(): void;
}

/** What a RUN asks of its cache mount. */
export interface CacheMountRequest {
  /** The build's cache namespace (its tenant's; '' when the farm shares its cache). */
  namespace: string;
  id: string;
  sharing: CacheSharing;
  /** A read-only mount: nothing it does is kept. */
  readonly: boolean;
  signal?: AbortSignal;
}

/** Where cache mounts come from: this worker's directories only, or the farm's (farm-cache-mounts.ts). */
export interface CacheMountProvider {
  mount(req: CacheMountRequest): Promise<CacheMountHandle>;
  /** Waits for work started after runs (uploads), before the process goes away. */
  flush?(): Promise<void>;
}

/**
 * Runs once, by the first user of an instance directory that nobody else uses, before anyone uses
 * it (others wait): brings the directory up to date. `created`: the directory was just made.
 * Returns whether the directory counts as new (to be seeded from the mount's input).
 */
export type PrepareInstance = (dir: string, created: boolean) => Promise<boolean>;

/** One instance directory as the worker's GC sees it (`exec.cachemount` records). */
export interface CacheMountDirInfo {
  /** `<name>/<n>`: the cache's directory name and the instance. */
  id: string;
  /** Bytes allocated (as `du`). */
  size: number;
  createdMs: number;
  /** The end of its last use (the directory's mtime, which a release sets). */
  lastUsedMs: number;
  /** Uses since this process started. */
  uses: number;
  inUse: boolean;
}

interface DirState {
  users: number;
  uses?: number;
  exclusive: boolean;
  waiters: Array<() => void>;
  /** Set while the first user prepares the directory. */
  preparing?: Promise<boolean>;
}

/**
 * Persistent cache directories (`RUN --mount=type=cache`), one set per cache id under `root`,
 * surviving runs and worker restarts. `shared`: every run uses the main directory at once.
 * `private`: the main directory when nobody uses it, else another directory of the same id that is
 * free (made when none is). `locked`: the main directory, exclusively; later runs wait in order.
 * Locks are in-process: one worker owns its state dir.
 */
export class CacheMounts implements CacheMountProvider {
  private readonly dirs = new Map<string, DirState>();

  constructor(private readonly root: string) {}

  mount(req: CacheMountRequest): Promise<LocalCacheMountHandle> {
    return this.acquire(req.namespace ? `${req.namespace}\0${req.id}` : req.id, req.sharing);
  }

  /** Whether instance `n` of the cache named `name` is in use or awaited here. */
  busy(name: string, n: number): boolean {
    const st = this.dirs.get(join(this.root, name, String(n)));
    return st !== undefined && (st.users > 0 || st.waiters.length > 0);
  }

  /**
   * Instance directory `n` of the cache named `name` (a file name the caller made), shared with
   * other non-exclusive users of this process or `exclusive`; waits in order. The first user of
   * an idle directory runs `prepare` before anyone uses it.
   */
  async acquireInstance(
    name: string,
    n: number,
    exclusive: boolean,
    prepare?: PrepareInstance,
  ): Promise<LocalCacheMountHandle> {
    const dir = join(this.root, name, String(n));
    const st = this.state(dir);
    for (;;) {
      while (st.exclusive || (exclusive && st.users > 0)) {
        await new Promise<void>((resolve) => st.waiters.push(resolve));
      }
      const p = st.preparing;
      if (p === undefined) break;
      // Someone prepares it: use it once ready (or retry after its failure).
      await p.catch(() => undefined);
      if (st.preparing === p) st.preparing = undefined;
    }
    const first = st.users === 0;
    st.users++;
    st.exclusive = exclusive;
    if (!first || prepare === undefined) {
      try {
        return this.handle(dir, st, await ensureDir(dir));
      } catch (err) {
        this.done(st);
        throw err;
      }
    }
    // Set before any await: whoever comes meanwhile waits for it.
    const preparing = (async () => prepare(dir, await ensureDir(dir)))();
    st.preparing = preparing;
    try {
      return this.handle(dir, st, await preparing);
    } catch (err) {
      this.done(st);
      throw err;
    } finally {
      if (st.preparing === preparing) st.preparing = undefined;
    }
  }

  async acquire(id: string, sharing: CacheSharing): Promise<LocalCacheMountHandle> {
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

  private handle(path: string, st: DirState, created: boolean): LocalCacheMountHandle {
    let released = false;
    st.uses = (st.uses ?? 0) + 1;
    return {
      path,
      created,
      release: () => {
        if (released) return;
        released = true;
        // Its mtime is its last use, also across restarts (the GC orders by it).
        const now = new Date();
        utimes(path, now, now).catch(() => undefined);
        this.done(st);
      },
    };
  }

  /** Every instance directory (in use or not), for the worker's GC and `kiln du`. */
  async list(): Promise<CacheMountDirInfo[]> {
    const out: CacheMountDirInfo[] = [];
    for (const name of await readdir(this.root).catch(() => [] as string[])) {
      for (const n of await readdir(join(this.root, name)).catch(() => [] as string[])) {
        if (!/^\d+$/.test(n)) continue; // `<n>.version` markers, `.new` and `.sync` temps
        const dir = join(this.root, name, n);
        const st = this.dirs.get(dir);
        try {
          const s = await stat(dir);
          const { size } = await diskUsage(dir);
          out.push({
            id: `${name}/${n}`,
            size,
            createdMs: s.birthtimeMs || s.ctimeMs,
            lastUsedMs: s.mtimeMs,
            uses: st?.uses ?? 0,
            inUse: st !== undefined && (st.users > 0 || st.waiters.length > 0 || !!st.preparing),
          });
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err; // removed meanwhile
        }
      }
    }
    return out;
  }

  /**
   * Removes instance directory `id` (`<name>/<n>`, as {@link list} names it) and its version
   * marker unless it is in use or awaited; false then, or when it is gone. The next use starts
   * from an empty directory (a farm cache mount downloads its current version again).
   */
  async remove(id: string): Promise<boolean> {
    const m = /^([0-9a-f]{32,64})\/(\d+)$/.exec(id);
    if (!m) return false;
    const dir = join(this.root, m[1]!, m[2]!);
    const st = this.state(dir);
    if (st.users > 0 || st.waiters.length > 0 || st.preparing) return false;
    // Held exclusively while it goes: a mount asked meanwhile waits, then makes it anew.
    st.users++;
    st.exclusive = true;
    try {
      await stat(dir);
    } catch {
      this.done(st);
      return false;
    }
    try {
      await rm(`${dir}.version`, { force: true });
      await rm(dir, { recursive: true, force: true });
    } finally {
      this.done(st);
      if (st.users === 0 && st.waiters.length === 0) this.dirs.delete(dir);
    }
    return true;
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
