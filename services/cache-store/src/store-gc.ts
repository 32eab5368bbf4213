/**
 * Garbage collection of the shared content store: mark and sweep.
 *
 * Mark: every digest a live cache record names (the cache index, `kiln_tasks`: a record's result
 * names its layer and export blobs, its task names the image and context blobs it read; see
 * {@link recordDigests}). Sweep: every other blob not used within `keepDurationMs` is deleted.
 *
 * Safe against builds running meanwhile: a blob a build writes is new, and a blob a build reuses
 * is touched first (`BlobStore.put` of content already stored, `touch` by the context sync and the
 * image source), so both are younger than the keep duration. A candidate's last use is read again
 * just before it is deleted (a listing may lag a touch). What remains is a window of one request
 * between that read and the delete; a build that loses a blob in it rebuilds the step
 * (`TASK_INPUT_LOST`) or re-uploads the file.
 */
import type { BlobStore, Digest } from '@kiln/store';

export interface StoreGcOptions {
  store: BlobStore;
  /** The digests live records name (read once per run, before the listing). */
  live: () => Promise<ReadonlySet<string>>;
  /** Unreferenced blobs used within this long are kept (the grace of builds in flight). */
  keepDurationMs: number;
  /** Report what would be deleted, delete nothing. */
  dryRun?: boolean;
  now?: () => number;
  /** Called for each blob deleted (or, with `dryRun`, that would be). */
  onDelete?: (b: { digest: Digest; size: number }) => void;
}

export interface StoreGcReport {
  /** Blobs listed, and their bytes. */
  blobs: number;
  bytes: number;
  /** Blobs a live record names. */
  live: number;
  /** Unreferenced blobs kept because they were used within the keep duration. */
  recent: number;
  /** Blobs deleted (with `dryRun`: that would be), and their bytes. */
  deleted: number;
  deletedBytes: number;
  /** Digests live records name that the store does not hold (cache keys, diffIDs... as well). */
  missing: number;
}

export async function collectStore(o: StoreGcOptions): Promise<StoreGcReport> {
  const now = o.now ?? Date.now;
  const cutoff = now() - o.keepDurationMs;
  const live = await o.live();
  const r: StoreGcReport = {
    blobs: 0,
    bytes: 0,
    live: 0,
    recent: 0,
    deleted: 0,
    deletedBytes: 0,
    missing: 0,
  };
  const candidates: { digest: Digest; size: number }[] = [];
  const seen = new Set<string>();
  for await (const b of o.store.list()) {
    r.blobs += 1;
    r.bytes += b.size;
    seen.add(b.digest);
    if (live.has(b.digest)) r.live += 1;
    else if ((b.modified?.getTime() ?? now()) > cutoff) r.recent += 1;
    else candidates.push({ digest: b.digest, size: b.size });
  }
  for (const d of live) if (!seen.has(d)) r.missing += 1;
  for (const c of candidates) {
    const used = await o.store.lastUsed(c.digest);
    if (used === undefined) continue;
    if (used.getTime() > cutoff) {
      r.recent += 1;
      continue;
    }
    if (!o.dryRun && !(await o.store.delete(c.digest))) continue;
    r.deleted += 1;
    r.deletedBytes += c.size;
    o.onDelete?.(c);
  }
  // Digests that only name blobs of other kinds (a manifest digest of an image never stored
  // here) count as missing too; the figure is for a person to read, not a failure.
  return r;
}

export interface StoreCollectorOptions extends StoreGcOptions {
  intervalMs: number;
  /** Before the first run (default: `intervalMs`). */
  firstRunMs?: number;
  onReport?: (r: StoreGcReport) => void;
  /** A failed run (the store or NATS away); the next run comes at the next interval. */
  onError?: (err: unknown) => void;
}

/** Collects the store every `intervalMs` until stopped; `stop()` waits for a run in progress. */
export function startStoreCollector(o: StoreCollectorOptions): { stop(): Promise<void> } {
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> = Promise.resolve();
  let stopped = false;
  const schedule = (ms: number): void => {
    if (stopped) return;
    timer = setTimeout(() => {
      running = collectStore(o).then(
        (r) => o.onReport?.(r),
        (err: unknown) => o.onError?.(err),
      );
      void running.then(() => schedule(o.intervalMs));
    }, ms);
    timer.unref();
  };
  schedule(o.firstRunMs ?? o.intervalMs);
  return {
    stop: async () => {
      stopped = true;
      clearTimeout(timer);
      await running;
    },
  };
}
