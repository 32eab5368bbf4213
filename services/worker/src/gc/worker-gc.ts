/**
 * Garbage collection of one worker's local cache: its committed snapshots (held results, the
 * layer snapshots under them, synced contexts) with what names them (the held results file, the
 * layer cache, the usage log). BuildKit's cache manager prune, on Kiln's state:
 *
 * - Records. Every snapshot is one usage record (BuildKit's `UsageRecord`): its own size, its
 *   parent, when it was made and last used, the result ids it holds. Active snapshots and views
 *   (a running exec's) are mutable and in use; a committed snapshot is in use while leased.
 * - What may go. A committed snapshot that is not leased, has no children (a parent goes once its
 *   children have), was neither made nor used within `graceMs`, and matches the filters.
 * - Order. Least recently used first (last use, else creation). With `keepBytes`, removal stops
 *   once the total is at most that; with `keepDurationMs`, only what was unused for longer goes.
 *   Rounds repeat while something went, since a removed child frees its parent.
 * - Safety against running tasks. A task leases its inputs' snapshots the moment it looks them up
 *   (task-runner.ts), and `Snapshotter.remove` refuses a leased snapshot under its lock, so a
 *   lookup either finds the snapshot and keeps it, or finds it gone and fetches the result like
 *   any other. A snapshot no held result names yet, made since the oldest running task started
 *   (`runningSince`), may be that task's output or a layer it is fetching: it counts as in use.
 * - What a removal leaves. The held result is forgotten (no longer advertised), and so are its
 *   layer record and usage; the task record on the bus still names this worker as holder. A task
 *   that needs the result then finds it missing (`MATERIALIZE_RESULT_UNKNOWN`, then
 *   `TASK_INPUT_LOST`) and the scheduler reruns the vertex that made it, as for a dead holder.
 *
 * One collection at a time: `prune` calls queue.
 */
import type { GcUsageRecord } from '@kiln/bus';
import type { LayerCache } from '../exporters/layers.js';
import type { CacheMountDirInfo } from '../ops/exec/cache-mounts.js';
import type { HeldResults } from '../node/held-results.js';
import { SnapshotError, SnapshotErrorCode } from '../snapshot/index.js';
import type { SnapshotInfo, Snapshotter } from '../snapshot/index.js';
import { compileFilters } from './filters.js';
import type { GcConfig } from './policy.js';
import type { UsageLog } from './usage-log.js';

export interface PruneOptions {
  filter?: readonly string[];
  /**
   * BuildKit's `--all`: every record not in use, the grace period ignored. What a running task
   * holds stays.
   */
  all?: boolean;
  /** Keep what was used within this long (0: no such limit). */
  keepDurationMs?: number;
  /** Stop once the total is at most this many bytes (0: remove everything selected). */
  keepBytes?: number;
}

export interface WorkerGcOptions {
  snapshotter: Snapshotter;
  held: HeldResults;
  layers: LayerCache;
  usage: UsageLog;
  /**
   * The working copies of exec cache mounts (`RUN --mount=type=cache`), listed and collected as
   * BuildKit's `exec.cachemount` records: by last use, never one a run uses or waits for.
   */
  cacheMounts?: {
    list(): Promise<CacheMountDirInfo[]>;
    remove(id: string): Promise<boolean>;
  };
  config: GcConfig;
  /** Free bytes on the state dir's filesystem (for `minFreeBytes`). */
  freeBytes?: () => Promise<number>;
  /** Whether no task runs (the keep-duration pass waits for idle time). */
  idle?: () => boolean;
  /** When the oldest running task started (ms since the epoch); undefined when none runs. */
  runningSince?: () => number | undefined;
  /** Told of each background collection that removed something, and of failures. */
  onCollected?: (removed: GcUsageRecord[], totalBefore: number) => void;
  onError?: (err: unknown) => void;
  now?: () => number;
}

interface Scan {
  records: GcUsageRecord[];
  children: Map<string, number>;
  heldBy: Map<string, string[]>;
  total: number;
}

export class WorkerGc {
  #queue: Promise<unknown> = Promise.resolve();
  #timer: NodeJS.Timeout | undefined;
  #ticking = false;
  readonly #now: () => number;

  constructor(private readonly o: WorkerGcOptions) {
    this.#now = o.now ?? Date.now;
  }

  get config(): GcConfig {
    return this.o.config;
  }

  /** The usage records, filtered (BuildKit's DiskUsage). */
  async diskUsage(filter: readonly string[] = []): Promise<GcUsageRecord[]> {
    const match = compileFilters(filter);
    return (await this.#scan()).records.filter(match);
  }

  /** Removes what the options select and returns the removed records (BuildKit's Prune). */
  prune(opts: PruneOptions = {}): Promise<GcUsageRecord[]> {
    const p = this.#queue.then(() => this.#prune(opts));
    this.#queue = p.catch(() => undefined);
    return p;
  }

  /** Starts the background collection (every `intervalMs`); idempotent. */
  start(): void {
    if (!this.o.config.enabled || this.#timer) return;
    this.#timer = setInterval(() => void this.collect(), this.o.config.intervalMs);
    this.#timer.unref();
  }

  /** Stops the background collection and waits for a running one; writes the usage log. */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#queue;
    await this.o.usage.flush();
  }

  /**
   * One background pass of the configured policy: over `keepBytes` (or under `minFreeBytes`
   * free), the least recently used records go until it fits, never below `reservedBytes`; when
   * idle, records unused for `keepDurationMs` go. Returns what was removed. Errors go to
   * `onError`.
   */
  async collect(): Promise<GcUsageRecord[]> {
    if (this.#ticking) return [];
    this.#ticking = true;
    try {
      const c = this.o.config;
      const { total } = await this.#scan();
      let target = c.keepBytes;
      if (c.minFreeBytes > 0 && this.o.freeBytes) {
        const free = await this.o.freeBytes();
        if (free < c.minFreeBytes) target = Math.min(target, total - (c.minFreeBytes - free));
      }
      target = Math.max(target, c.reservedBytes);
      const removed: GcUsageRecord[] = [];
      if (total > target) removed.push(...(await this.prune({ keepBytes: Math.max(1, target) })));
      if (c.keepDurationMs > 0 && (this.o.idle?.() ?? true)) {
        const after = total - removed.reduce((n, r) => n + r.size, 0);
        if (after > c.reservedBytes)
          removed.push(
            ...(await this.prune({
              keepDurationMs: c.keepDurationMs,
              keepBytes: Math.max(1, c.reservedBytes),
            })),
          );
      }
      await this.o.held.compact();
      await this.o.usage.flush();
      if (removed.length > 0) this.o.onCollected?.(removed, total);
      return removed;
    } catch (err) {
      this.o.onError?.(err);
      return [];
    } finally {
      this.#ticking = false;
    }
  }

  async #prune(opts: PruneOptions): Promise<GcUsageRecord[]> {
    const match = compileFilters(opts.filter ?? []);
    const keepBytes = opts.keepBytes ?? 0;
    const keepDurationMs = opts.keepDurationMs ?? 0;
    const removed: GcUsageRecord[] = [];
    for (;;) {
      const scan = await this.#scan();
      let total = scan.total;
      if (keepBytes > 0 && total <= keepBytes) break;
      const now = this.#now();
      // --all: everything made or used up to now qualifies (same millisecond included); what a
      // task looked up since holds a lease, which the snapshotter's remove refuses.
      const graceCut = opts.all ? now + 1 : now - this.o.config.graceMs;
      const keepCut = keepDurationMs > 0 ? now - keepDurationMs : Infinity;
      const candidates = scan.records
        .filter(
          (r) =>
            !r.inUse &&
            !r.mutable &&
            (scan.children.get(r.id) ?? 0) === 0 &&
            activity(r) < graceCut &&
            activity(r) < keepCut &&
            match(r),
        )
        .sort((a, b) => activity(a) - activity(b) || (a.id < b.id ? -1 : 1));
      let progressed = false;
      for (const r of candidates) {
        if (keepBytes > 0 && total <= keepBytes) break;
        if (!(await this.#remove(r, scan.heldBy.get(r.id) ?? [], graceCut))) continue;
        total -= r.size;
        removed.push(r);
        progressed = true;
      }
      if (!progressed) break;
    }
    return removed;
  }

  /** Removes one record's snapshot, then what names it; false when it turned out to be in use. */
  async #remove(r: GcUsageRecord, resultIds: string[], graceCut: number): Promise<boolean> {
    // Used since the scan (a task looked it up): keep it. The lease taken with that lookup also
    // makes the snapshotter refuse the removal below.
    if (r.recordType === CACHE_MOUNT_TYPE) {
      const id = r.id.slice(CACHE_MOUNT_PREFIX.length);
      const now = (await this.o.cacheMounts?.list())?.find((c) => c.id === id);
      if (!now || now.lastUsedMs >= graceCut) return false;
      return (await this.o.cacheMounts?.remove(id)) ?? false;
    }
    const u = this.o.usage.get(r.id);
    if (u && u.lastUsedMs >= graceCut) return false;
    try {
      await this.o.snapshotter.remove(r.id);
    } catch (err) {
      if (
        err instanceof SnapshotError &&
        (err.code === SnapshotErrorCode.InUse || err.code === SnapshotErrorCode.NotFound)
      )
        return false;
      throw err;
    }
    for (const id of resultIds) if (this.o.held.get(id) === r.id) await this.o.held.delete(id);
    await this.o.layers.forget([r.id]);
    this.o.usage.forget(r.id);
    return true;
  }

  async #scan(): Promise<Scan> {
    const snaps = await this.o.snapshotter.list();
    const children = new Map<string, number>();
    for (const s of snaps) if (s.parent) children.set(s.parent, (children.get(s.parent) ?? 0) + 1);
    const heldBy = new Map<string, string[]>();
    for (const id of this.o.held.ids()) {
      const s = this.o.held.get(id);
      if (s !== undefined) heldBy.set(s, [...(heldBy.get(s) ?? []), id]);
    }
    const records: GcUsageRecord[] = [];
    let total = 0;
    const since = this.o.runningSince?.();
    for (const s of snaps) {
      const size = await this.#size(s);
      if (size === undefined) continue; // removed meanwhile
      total += size;
      const u = this.o.usage.get(s.key);
      const ids = heldBy.get(s.key) ?? [];
      const created = Date.parse(s.created) || 0;
      const pending = since !== undefined && ids.length === 0 && created >= since;
      records.push({
        id: s.key,
        mutable: s.kind !== 'committed',
        inUse: s.kind !== 'committed' || pending || this.o.snapshotter.refCount(s.key) > 0,
        size,
        parents: s.parent ? [s.parent] : [],
        createdAtMs: created,
        lastUsedAtMs: u?.lastUsedMs ?? 0,
        usageCount: u?.count ?? 0,
        description: describe(s, ids),
        recordType: 'regular',
        shared: false,
      });
    }
    for (const c of (await this.o.cacheMounts?.list()) ?? []) {
      total += c.size;
      records.push({
        id: `${CACHE_MOUNT_PREFIX}${c.id}`,
        mutable: false,
        inUse: c.inUse,
        size: c.size,
        parents: [],
        createdAtMs: c.createdMs,
        lastUsedAtMs: c.lastUsedMs,
        usageCount: c.uses,
        description: `cache mount ${c.id}`,
        recordType: CACHE_MOUNT_TYPE,
        shared: false,
      });
    }
    return { records, children, heldBy, total };
  }

  /** A snapshot's own size: measured once for a committed one, each time for a mutable one. */
  async #size(s: SnapshotInfo): Promise<number | undefined> {
    const known = s.kind === 'committed' ? this.o.usage.get(s.key)?.size : undefined;
    if (known !== undefined) return known;
    try {
      const { size } = await this.o.snapshotter.usage(s.key);
      if (s.kind === 'committed') this.o.usage.setSize(s.key, size);
      return size;
    } catch (err) {
      if (err instanceof SnapshotError && err.code === SnapshotErrorCode.NotFound) return undefined;
      // A directory changing under the walk (an active snapshot being written): not measured.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
      throw err;
    }
  }
}

/** BuildKit's record type of a cache mount, and the prefix of its record ids here. */
const CACHE_MOUNT_TYPE = 'exec.cachemount';
const CACHE_MOUNT_PREFIX = 'cachemount:';

/** When a record was last made or used. */
function activity(r: GcUsageRecord): number {
  return Math.max(r.lastUsedAtMs, r.createdAtMs);
}

function describe(s: SnapshotInfo, resultIds: string[]): string {
  if (resultIds.length > 0) return `result ${resultIds.join(', ')}`;
  if (s.key.startsWith('layer-')) return `layer sha256:${s.key.slice('layer-'.length)}`;
  if (s.kind !== 'committed') return `${s.kind} snapshot`;
  return 'snapshot';
}
