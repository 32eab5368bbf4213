import { createHash, randomBytes } from 'node:crypto';
import { lstat, mkdir, readFile, readdir, readlink, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  CacheMountLocks,
  cacheMountName,
  casCacheMountVersion,
  readCacheMountVersion,
} from '@kiln/bus';
import type { CacheMountLockOptions, CacheMountVersion, HeldCacheMountLock } from '@kiln/bus';
import { applyLayer, writeLayer } from '@kiln/layers';
import type { BlobStore, Digest } from '@kiln/store';
import type { KV } from '@nats-io/kv';
import type { Logger } from 'pino';
import type {
  CacheMountHandle,
  CacheMountProvider,
  CacheMountRequest,
  CacheMounts,
  LocalCacheMountHandle,
} from './cache-mounts.js';
import { CacheMountBusyError } from './errors.js';

export interface FarmCacheMountsOptions extends CacheMountLockOptions {
  /**
   * The bucket `kiln_cache_mounts` (`openCacheMountsBucket`), opened on first use (the scheduler
   * creates it; a worker may not) and again after a failure.
   */
  bucket: () => Promise<KV>;
  store: BlobStore;
  /** This worker's directories (one `CacheMounts` per state dir). */
  local: CacheMounts;
  workerId: string;
  /** How long a reader waits for another worker's upload before using the older version. Default 60 s. */
  pendingWaitMs?: number;
  /** Instances a `private` mount may open before failing. Default 256. */
  maxInstances?: number;
  logger?: Logger;
}

const EMPTY: CacheMountVersion = { version: 0, digest: '', size: 0, worker: '' };

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Cache mounts that follow the build to any worker of the farm (issue 13). A cache mount
 * instance's content is versioned in the `kiln_cache_mounts` bucket (`@kiln/bus` cache-mounts.ts)
 * and stored as a layer blob (the whole directory) in the content store.
 *
 * - **Mount**: the first user on this worker of an idle instance brings its directory to the
 *   current version (downloaded unless the directory already is that version), after waiting
 *   up to `pendingWaitMs` for an upload another worker announced.
 * - **After a writable RUN**: the instance is marked `pending` before the task ends; the upload
 *   (a tar of the directory) and the version's compare-and-set happen after it, off the task's
 *   path, while this worker keeps the directory (and the farm lock, if any).
 * - **Sharing**: `shared` uses instance 0 with no farm lock (concurrent writers race; the last
 *   version wins, as BuildKit's shared is undefined under concurrent writes). `locked` takes
 *   instance 0's farm lock, held until its upload is in: RUNs on any workers are serialised, each
 *   seeing the previous one's writes. `private` takes the first instance whose farm lock is free.
 */
export class FarmCacheMounts implements CacheMountProvider {
  readonly #o: FarmCacheMountsOptions;
  #kv: Promise<{ kv: KV; locks: CacheMountLocks }> | undefined;
  readonly #uploads = new Set<Promise<void>>();
  /**
   * The tree stamp ({@link treeStamp}) of each working copy when it last was a known version:
   * a RUN after which the stamp is the same uploads nothing.
   */
  readonly #stamps = new Map<string, { stamp: string; digest: string }>();

  constructor(o: FarmCacheMountsOptions) {
    this.#o = o;
  }

  #open(): Promise<{ kv: KV; locks: CacheMountLocks }> {
    const opening = (this.#kv ??= this.#o
      .bucket()
      .then((kv) => ({ kv, locks: new CacheMountLocks(kv, this.#o.workerId, this.#o) })));
    opening.catch(() => {
      if (this.#kv === opening) this.#kv = undefined;
    });
    return opening;
  }

  async mount(req: CacheMountRequest): Promise<CacheMountHandle> {
    const name = cacheMountName(req.namespace, req.id);
    const { kv, locks } = await this.#open();
    let lock: HeldCacheMountLock | undefined;
    let instance = 0;
    if (req.sharing === 'locked') {
      lock = await locks.acquire(name, 0, 'locked', req.signal);
    } else if (req.sharing === 'private') {
      const max = this.#o.maxInstances ?? 256;
      for (; instance < max; instance++) {
        if (this.#o.local.busy(name, instance)) continue;
        lock = await locks.tryAcquire(name, instance, 'private');
        if (lock) break;
      }
      if (!lock) throw new CacheMountBusyError(req.id, max);
    }
    let local: LocalCacheMountHandle;
    try {
      local = await this.#o.local.acquireInstance(
        name,
        instance,
        req.sharing !== 'shared',
        async (dir, made) => (await this.#sync(kv, name, instance, dir, made)).created,
      );
    } catch (err) {
      await lock?.release().catch(() => undefined);
      throw err;
    }
    let released = false;
    return {
      path: local.path,
      created: local.created,
      release: async () => {
        if (released) return;
        released = true;
        if (req.readonly) {
          local.release();
          await lock?.release().catch((err: unknown) => this.#warn(err, 'cache lock release'));
          return;
        }
        const token = randomBytes(12).toString('hex');
        try {
          await casCacheMountVersion(kv, name, instance, (cur) => ({
            ...(cur ?? EMPTY),
            pending: { worker: this.#o.workerId, token },
          }));
        } catch (err) {
          this.#warn(err, 'cache mount pending mark');
        }
        const job = this.#publish(kv, name, instance, local, token)
          .catch((err: unknown) => this.#warn(err, 'cache mount upload'))
          .finally(async () => {
            local.release();
            await lock?.release().catch((err: unknown) => this.#warn(err, 'cache lock release'));
          });
        this.#uploads.add(job);
        void job.finally(() => this.#uploads.delete(job));
      },
    };
  }

  /** Waits for every upload started so far (a drain calls it). */
  async flush(): Promise<void> {
    while (this.#uploads.size > 0) await Promise.allSettled([...this.#uploads]);
  }

  /** Brings `dir` to the instance's current version. `created`: the cache is new (seed it). */
  async #sync(
    kv: KV,
    name: string,
    instance: number,
    dir: string,
    made: boolean,
  ): Promise<{ created: boolean }> {
    const v = await this.#current(kv, name, instance);
    const marker = `${dir}.version`;
    if (v.digest === '') return { created: made };
    const have = await readFile(marker, 'utf8').catch(() => '');
    // Already that version (or changed here since, by a run whose upload never finished: with no
    // stamp known, the next writable use uploads it).
    if (have === v.digest) return { created: false };
    const tmp = `${dir}.sync`;
    await rm(tmp, { recursive: true, force: true });
    await mkdir(tmp, { mode: 0o755 });
    try {
      await applyLayer(await this.#o.store.get(v.digest as Digest), tmp);
    } catch (err) {
      // A cache may lose its content (the store collected it): go on with what is here.
      await rm(tmp, { recursive: true, force: true });
      this.#warn(err, 'cache mount download');
      return { created: made };
    }
    await rm(dir, { recursive: true, force: true });
    await rename(tmp, dir);
    await writeFile(marker, v.digest);
    this.#stamps.set(dir, { stamp: await treeStamp(dir), digest: v.digest });
    this.#o.logger?.debug({ cache: name, instance, version: v.version }, 'cache mount synced');
    return { created: false };
  }

  /**
   * The instance's version, once no other worker's announced upload is in flight. After
   * `pendingWaitMs` the announcement is taken as dead (its worker died or is stuck) and cleared,
   * so that later readers do not wait for it again.
   */
  async #current(kv: KV, name: string, instance: number): Promise<CacheMountVersion> {
    const t0 = performance.now();
    const waitMs = this.#o.pendingWaitMs ?? 60_000;
    for (;;) {
      const { value } = await readCacheMountVersion(kv, name, instance);
      const v = value ?? EMPTY;
      const p = v.pending;
      // Ours from an earlier process of this worker is stale; ours now holds the directory.
      if (p === undefined || p.worker === this.#o.workerId) return v;
      if (performance.now() - t0 >= waitMs) {
        this.#o.logger?.warn(
          { cache: name, instance, pendingWorker: p.worker },
          'cache mount upload awaited in vain',
        );
        return (await casCacheMountVersion(kv, name, instance, clearPending(p.token))) ?? v;
      }
      await sleep(100);
    }
  }

  /** Uploads the directory as the instance's next version (unless unchanged). */
  async #publish(
    kv: KV,
    name: string,
    instance: number,
    local: LocalCacheMountHandle,
    token: string,
  ): Promise<void> {
    const clearOurs = clearPending(token);
    const dir = local.path;
    const stamp = await treeStamp(dir);
    const known = this.#stamps.get(dir);
    if (known?.stamp === stamp) {
      // Unchanged since it was that version: nothing to upload (unless another worker's is newer).
      await casCacheMountVersion(kv, name, instance, clearOurs);
      return;
    }
    let desc;
    try {
      desc = await writeLayer(this.#o.store, { kind: 'compare', newDir: dir });
    } catch (err) {
      await casCacheMountVersion(kv, name, instance, clearOurs);
      throw err;
    }
    const next = await casCacheMountVersion(kv, name, instance, (cur) => {
      const base = cur ?? EMPTY;
      const other = base.pending?.token === token ? undefined : base.pending;
      if (base.digest === desc.digest) return clearOurs(cur);
      return {
        version: base.version + 1,
        digest: desc.digest,
        size: desc.size,
        worker: this.#o.workerId,
        ...(other ? { pending: other } : {}),
      };
    });
    await writeFile(`${dir}.version`, desc.digest);
    this.#stamps.set(dir, { stamp, digest: desc.digest });
    this.#o.logger?.debug(
      { cache: name, instance, version: next?.version, digest: desc.digest, size: desc.size },
      'cache mount uploaded',
    );
  }

  #warn(err: unknown, what: string): void {
    this.#o.logger?.warn({ err, what }, 'cache mount');
  }
}

/** A change of the version record that removes the pending mark `token` (and nothing else). */
function clearPending(
  token: string,
): (cur: CacheMountVersion | undefined) => CacheMountVersion | undefined {
  return (cur) => {
    if (cur?.pending?.token !== token) return undefined;
    const { pending: _cleared, ...rest } = cur;
    return rest;
  };
}

/**
 * A digest of a tree's names, types, modes, owners, sizes, mtimes and link targets: what changes
 * when a RUN writes to it (content rewritten in place within one mtime tick aside, as make's own
 * rule). Cheaper than a tar of it by far.
 */
export async function treeStamp(root: string): Promise<string> {
  const h = createHash('sha256');
  const walk = async (rel: string): Promise<void> => {
    const names = (await readdir(join(root, rel))).sort();
    for (const n of names) {
      const r = rel === '' ? n : `${rel}/${n}`;
      const st = await lstat(join(root, r), { bigint: true });
      h.update(`${r}\0${st.mode}\0${st.uid}:${st.gid}\0${st.size}\0${st.mtimeNs}\0`);
      if (st.isSymbolicLink()) h.update(await readlink(join(root, r)));
      h.update('\n');
      if (st.isDirectory()) await walk(r);
    }
  };
  await walk('');
  return h.digest('hex');
}
