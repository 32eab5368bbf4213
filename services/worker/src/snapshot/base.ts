import { lstat, mkdir, readdir, rm } from 'node:fs/promises';
import { cleanupAfter } from '@kiln/protocol';
import { join } from 'node:path';
import { coalesced } from '../cache/coalesced-write.js';
import { SnapshotError, SnapshotErrorCode } from './errors.js';
import { MetadataLog } from './metadata.js';
import { unmountUnder } from './mount.js';
import type { LogLine, MetadataFile, SnapshotRecord } from './metadata.js';
import type {
  DiffSourceHandle,
  MountSpec,
  SnapshotInfo,
  SnapshotLease,
  SnapshotOptions,
  SnapshotUsage,
  Snapshotter,
} from './types.js';

/**
 * What both backends share: the metadata file, the namespace of keys, reference counts, the
 * mutation lock and crash cleanup. A backend lays out `snapshots/<id>/` and says how to mount it.
 */
export abstract class BaseSnapshotter implements Snapshotter {
  abstract readonly backend: 'overlayfs' | 'native';
  protected readonly snapshotsDir: string;
  private meta: MetadataFile;
  private log: MetadataLog | undefined;
  /** Changes made in memory and not yet appended to the log (see {@link save}). */
  private pending: LogLine[] = [];
  private readonly leases = new Map<string, number>();
  private lock: Promise<unknown> = Promise.resolve();

  protected constructor(
    protected readonly root: string,
    backend: string,
  ) {
    this.snapshotsDir = join(root, 'snapshots');
    this.meta = { version: 1, backend, nextId: 1, snapshots: {} };
  }

  /** Loads the metadata and removes directories that no record names (a crash mid-prepare/remove). */
  protected async load(): Promise<void> {
    await mkdir(this.snapshotsDir, { recursive: true });
    const { log, meta } = await MetadataLog.open(
      join(this.root, 'metadata.jsonl'),
      join(this.root, 'metadata.json'),
      this.meta.backend,
    );
    if (meta.backend !== this.meta.backend) {
      throw new SnapshotError(
        SnapshotErrorCode.InvalidState,
        `state dir ${this.root} belongs to the ${meta.backend} snapshotter, not ${this.meta.backend}`,
      );
    }
    this.meta = meta;
    this.log = log;
    // Mount points a dead process left under tmp/ (views mounted for diffs, flattening).
    await unmountUnder(join(this.root, 'tmp'));
    await rm(join(this.root, 'tmp'), { recursive: true, force: true });
    const ids = new Set(Object.values(this.meta.snapshots).map((r) => String(r.id)));
    for (const name of await readdir(this.snapshotsDir)) {
      if (!ids.has(name)) await rm(join(this.snapshotsDir, name), { recursive: true, force: true });
    }
  }

  /** Runs `fn` with mutations serialised. */
  protected locked<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.lock.then(fn, fn);
    this.lock = p.catch(() => undefined);
    return p;
  }

  protected dirOf(rec: SnapshotRecord): string {
    return join(this.snapshotsDir, String(rec.id));
  }

  protected record(key: string): SnapshotRecord {
    const rec = Object.hasOwn(this.meta.snapshots, key) ? this.meta.snapshots[key] : undefined;
    if (rec === undefined) {
      throw new SnapshotError(
        SnapshotErrorCode.NotFound,
        `snapshot ${JSON.stringify(key)} not found`,
        {
          details: { key },
        },
      );
    }
    return rec;
  }

  private committed(name: string): SnapshotRecord {
    const rec = this.record(name);
    if (rec.kind !== 'committed') {
      throw new SnapshotError(
        SnapshotErrorCode.InvalidState,
        `parent ${JSON.stringify(name)} is not committed`,
        {
          details: { key: name },
        },
      );
    }
    return rec;
  }

  private assertFree(key: string): void {
    if (Object.hasOwn(this.meta.snapshots, key)) {
      throw new SnapshotError(
        SnapshotErrorCode.Exists,
        `snapshot ${JSON.stringify(key)} already exists`,
        {
          details: { key },
        },
      );
    }
  }

  /**
   * Resolves once the changes made so far are in the log. Appends are group-committed (the
   * changes of concurrent tasks go in one write); callers save after leaving the mutation lock.
   */
  private readonly save = coalesced(() => {
    const batch = this.pending;
    this.pending = [];
    return this.log!.append(batch, this.meta);
  });

  private put(key: string, rec: SnapshotRecord | null): void {
    if (rec === null) delete this.meta.snapshots[key];
    else this.meta.snapshots[key] = rec;
    this.pending.push([key, rec]);
  }

  /** Creates the backend's directories for a new active snapshot or view. */
  protected abstract create(
    rec: SnapshotRecord,
    dir: string,
    parent: SnapshotRecord | undefined,
  ): Promise<void>;
  /** The mounts of `key` (the record may be of any kind; committed ones mount read-only). */
  protected abstract mountsOf(key: string, rec: SnapshotRecord): Promise<MountSpec[]>;
  /** The directory holding the data this snapshot adds (for usage). */
  protected abstract ownDataDir(rec: SnapshotRecord): string | undefined;
  abstract upperDir(key: string): Promise<string | undefined>;
  abstract diffSource(key: string): Promise<DiffSourceHandle>;

  prepare(key: string, parent?: string, opts: SnapshotOptions = {}): Promise<MountSpec[]> {
    return this.newSnapshot('active', key, parent, opts);
  }

  view(key: string, parent: string, opts: SnapshotOptions = {}): Promise<MountSpec[]> {
    return this.newSnapshot('view', key, parent, opts);
  }

  private async newSnapshot(
    kind: 'active' | 'view',
    key: string,
    parent: string | undefined,
    opts: SnapshotOptions,
  ): Promise<MountSpec[]> {
    const rec = await this.locked(async () => {
      this.assertFree(key);
      const parentRec = parent === undefined ? undefined : this.committed(parent);
      const r: SnapshotRecord = {
        id: this.meta.nextId++,
        kind,
        created: new Date().toISOString(),
        labels: { ...opts.labels },
      };
      if (parent !== undefined) r.parent = parent;
      const dir = this.dirOf(r);
      try {
        await mkdir(dir);
        await this.create(r, dir, parentRec);
      } catch (err) {
        return cleanupAfter(
          err instanceof SnapshotError
            ? err
            : new SnapshotError(SnapshotErrorCode.Io, `creating snapshot ${key}`, {
                cause: err,
                details: { key },
              }),
          () => rm(dir, { recursive: true, force: true }),
        );
      }
      this.put(key, r);
      return r;
    });
    // Both awaited: the record is in the log before the caller gets the mounts.
    const [, mounts] = await Promise.all([this.save(), this.mountsOf(key, rec)]);
    return mounts;
  }

  mounts(key: string): Promise<MountSpec[]> {
    return settle(() => this.mountsOf(key, this.record(key)));
  }

  async commit(name: string, key: string, opts: SnapshotOptions = {}): Promise<void> {
    await this.locked(() => {
      const rec = this.record(key);
      if (rec.kind !== 'active') {
        throw new SnapshotError(
          SnapshotErrorCode.InvalidState,
          `only an active snapshot can be committed (${key} is a ${rec.kind})`,
          {
            details: { key },
          },
        );
      }
      if (this.refCount(key) > 0) {
        throw new SnapshotError(SnapshotErrorCode.InUse, `snapshot ${key} is in use`, {
          details: { key },
        });
      }
      this.assertFree(name);
      const committed: SnapshotRecord = {
        ...rec,
        kind: 'committed',
        created: new Date().toISOString(),
        labels: { ...rec.labels, ...opts.labels },
      };
      this.put(key, null);
      this.put(name, committed);
      return Promise.resolve();
    });
    await this.save();
  }

  async remove(key: string): Promise<void> {
    const rec = await this.locked(() => {
      const rec = this.record(key);
      if (this.refCount(key) > 0) {
        throw new SnapshotError(
          SnapshotErrorCode.InUse,
          `snapshot ${key} is in use (${this.refCount(key)} leases)`,
          {
            details: { key },
          },
        );
      }
      const child = Object.entries(this.meta.snapshots).find(([, r]) => r.parent === key);
      if (child !== undefined) {
        throw new SnapshotError(
          SnapshotErrorCode.InUse,
          `snapshot ${key} is the parent of ${child[0]}`,
          {
            details: { key, child: child[0] },
          },
        );
      }
      this.put(key, null);
      return Promise.resolve(rec);
    });
    await this.save();
    // Ids are never reused: no snapshot made meanwhile can own this directory.
    await rm(this.dirOf(rec), { recursive: true, force: true });
  }

  stat(key: string): Promise<SnapshotInfo> {
    return settle(() => info(key, this.record(key)));
  }

  list(): Promise<SnapshotInfo[]> {
    return Promise.resolve(
      Object.entries(this.meta.snapshots)
        .map(([k, r]) => info(k, r))
        .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0)),
    );
  }

  usage(key: string): Promise<SnapshotUsage> {
    return settle(() => {
      const dir = this.ownDataDir(this.record(key));
      return dir === undefined ? { size: 0, inodes: 0 } : diskUsage(dir);
    });
  }

  acquire(key: string): SnapshotLease {
    this.record(key);
    this.leases.set(key, (this.leases.get(key) ?? 0) + 1);
    let released = false;
    return {
      key,
      release: () => {
        if (released) return;
        released = true;
        const n = (this.leases.get(key) ?? 1) - 1;
        if (n <= 0) this.leases.delete(key);
        else this.leases.set(key, n);
      },
    };
  }

  refCount(key: string): number {
    return this.leases.get(key) ?? 0;
  }

  parentChain(key: string): Promise<string[]> {
    return settle(() =>
      this.chain(key)
        .slice(1)
        .map((c) => c.key),
    );
  }

  /** Records of `key` and its ancestors, nearest first. */
  protected chain(key: string): Array<{ key: string; rec: SnapshotRecord }> {
    const out: Array<{ key: string; rec: SnapshotRecord }> = [];
    let k: string | undefined = key;
    while (k !== undefined) {
      const rec = this.record(k);
      out.push({ key: k, rec });
      k = rec.parent;
    }
    return out;
  }
}

/** Runs `fn`, turning a synchronous throw into a rejection. */
export function settle<T>(fn: () => T | Promise<T>): Promise<T> {
  return new Promise<T>((resolve) => resolve(fn()));
}

function info(key: string, r: SnapshotRecord): SnapshotInfo {
  const i: SnapshotInfo = { key, kind: r.kind, created: r.created, labels: { ...r.labels } };
  if (r.parent !== undefined) i.parent = r.parent;
  return i;
}

/** Bytes allocated and inodes under `dir`, hardlinks counted once (as `du`). */
export async function diskUsage(dir: string): Promise<SnapshotUsage> {
  const seen = new Set<bigint>();
  let size = 0;
  let inodes = 0;
  const walk = async (p: string): Promise<void> => {
    const st = await lstat(p, { bigint: true });
    if (seen.has(st.ino)) return;
    seen.add(st.ino);
    inodes++;
    size += Number(st.blocks) * 512;
    if (st.isDirectory()) for (const n of await readdir(p)) await walk(join(p, n));
  };
  await walk(dir);
  return { size, inodes };
}
