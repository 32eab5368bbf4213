/**
 * The worker's garbage collection settings, BuildKit's GC policy applied to one worker's cache
 * (its held results and their snapshot chains):
 * - `keepBytes`: the cache is kept at most this big: when it is larger, the least recently used
 *   records go first until it fits (buildkitd's `gckeepstorage`). Default: 10% of the state
 *   dir's filesystem (BuildKit's `DetectDefaultGCCap`).
 * - `keepDurationMs`: while the worker is idle, records unused for longer than this go whatever
 *   the size (BuildKit's default policy removes data unused for 60 days). 0: never.
 * - `reservedBytes`: the cache is never pruned below this by the background GC (BuildKit's
 *   `reservedSpace`), so a small `keepBytes` or a full disk cannot empty a worker's cache.
 * - `minFreeBytes`: when the filesystem has less free space than this, the cache is pruned to
 *   give it back (BuildKit's `minFreeSpace`), still not below `reservedBytes`. 0: no such limit.
 * - `graceMs`: nothing made or used within this long is removed, by the background GC or a
 *   prune: a result the scheduler just recorded, or that a task dispatched now will read, stays.
 * - `intervalMs`: how often the background GC looks.
 */
export interface GcConfig {
  enabled: boolean;
  keepBytes: number;
  keepDurationMs: number;
  reservedBytes: number;
  minFreeBytes: number;
  graceMs: number;
  intervalMs: number;
}

export const DEFAULT_GC_KEEP_DURATION_MS = 60 * 24 * 3_600_000;
export const DEFAULT_GC_GRACE_MS = 5 * 60_000;
export const DEFAULT_GC_INTERVAL_MS = 60_000;

/** BuildKit's default cache cap: a tenth of the filesystem, and at least 1 GB when it is tiny. */
export function defaultKeepBytes(filesystemBytes: number): number {
  return Math.max(1e9, Math.round(filesystemBytes / 10));
}
