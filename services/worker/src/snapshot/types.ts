import type { DiffSource } from '@kiln/layers';

/**
 * One mount, as containerd describes it: `mount -t <type> -o <options> <source> <target>`.
 * `bind` mounts carry `rbind`/`bind` and `ro`/`rw` in `options`; `overlay` mounts carry
 * `lowerdir=...` (and `upperdir=`/`workdir=` when writable). Relative `lowerdir` entries are
 * relative to `cwd`, which is set when the absolute form would not fit the kernel's option limit.
 */
export interface MountSpec {
  type: 'bind' | 'overlay';
  source: string;
  options: string[];
  /** The directory to mount from, when options hold relative paths. */
  cwd?: string;
}

/** `active`: writable, from prepare(). `view`: read-only, from view(). `committed`: immutable, a parent. */
export type SnapshotKind = 'active' | 'view' | 'committed';

export interface SnapshotInfo {
  /** The key (active, view) or the name (committed). */
  key: string;
  kind: SnapshotKind;
  /** The committed snapshot this one sits on. */
  parent?: string;
  /** ISO time of creation (prepare/view) or of commit. */
  created: string;
  /** Free-form labels given at creation. */
  labels: Record<string, string>;
}

export interface SnapshotUsage {
  /** Bytes of disk used by this snapshot's own data (its upper dir, or its whole tree for a copy). */
  size: number;
  /** Inodes in it. */
  inodes: number;
}

/** A hold on a snapshot: while not released, the snapshot cannot be removed. Idempotent. */
export interface SnapshotLease {
  readonly key: string;
  release(): void;
}

/** How to produce a layer of a committed snapshot; call `release` when done reading. */
export interface DiffSourceHandle {
  source: DiffSource;
  release(): Promise<void>;
}

export interface SnapshotOptions {
  labels?: Record<string, string>;
}

/**
 * Snapshots as containerd's snapshotter models them: a committed snapshot is an immutable
 * filesystem tree (its parent chain plus its own changes); `prepare` makes a writable snapshot on
 * top of one, `view` a read-only one; `commit` turns a prepared snapshot into a committed one under
 * a new name. Keys and names share one namespace.
 *
 * Concurrency: every method may be called concurrently; mutations are serialised internally.
 * Ownership: nothing is removed while it is leased ({@link acquire}) or while it has children.
 * Durability: the metadata is written atomically to the state dir before a call returns; a new
 * instance on the same dir sees every snapshot (active ones included: their owner decides).
 */
export interface Snapshotter {
  /** `overlayfs` or `native` (copying). */
  readonly backend: 'overlayfs' | 'native';
  /** A writable snapshot on top of committed `parent` (or empty). Returns its mounts. */
  prepare(key: string, parent?: string, opts?: SnapshotOptions): Promise<MountSpec[]>;
  /** A read-only snapshot of committed `parent`. Returns its mounts. */
  view(key: string, parent: string, opts?: SnapshotOptions): Promise<MountSpec[]>;
  /** The mounts of an active snapshot or view; a committed snapshot's mounts are read-only. */
  mounts(key: string): Promise<MountSpec[]>;
  /** Makes active snapshot `key` the committed snapshot `name`; `key` no longer exists after. */
  commit(name: string, key: string, opts?: SnapshotOptions): Promise<void>;
  /** Removes a snapshot; fails with SNAPSHOT_IN_USE while leased or while it has children. */
  remove(key: string): Promise<void>;
  stat(key: string): Promise<SnapshotInfo>;
  usage(key: string): Promise<SnapshotUsage>;
  list(): Promise<SnapshotInfo[]>;
  /** Holds `key` against removal until the lease is released. */
  acquire(key: string): SnapshotLease;
  /** Leases currently held on `key`. */
  refCount(key: string): number;
  /**
   * The overlay upper dir of a snapshot (its own changes, whiteouts included); undefined for a
   * copying backend. Opaque directories are marked by an xattr there: see {@link diffSource}.
   */
  upperDir(key: string): Promise<string | undefined>;
  /** The committed ancestors of `key`, nearest first. */
  parentChain(key: string): Promise<string[]>;
  /** What to feed to the layer differ to diff `key` against its parent; always correct. */
  diffSource(key: string): Promise<DiffSourceHandle>;
}
