/**
 * When each snapshot was last used and how often (BuildKit's `LastUsedAt` and `UsageCount`), and
 * the size of committed ones (immutable, so measured once): what garbage collection orders by.
 * Uses are recorded in memory at once ({@link UsageLog.touch} is synchronous, so a task marks
 * its inputs before it awaits anything) and written to `node/usage.jsonl` (a {@link KvFile}) by
 * {@link UsageLog.flush}; after a crash the last few uses may be older than they were, which only
 * makes those snapshots look less recently used.
 */
import { KvFile } from '../cache/kv-file.js';

export interface Usage {
  /** ms since the epoch; 0: never used since it was made. */
  lastUsedMs: number;
  count: number;
  /** Bytes of a committed snapshot's own data, once measured. */
  size?: number;
}

export class UsageLog {
  readonly #map = new Map<string, Usage>();
  readonly #dirty = new Set<string>();

  private constructor(private readonly kv: KvFile) {
    for (const k of kv.keys()) {
      const u = parse(kv.get(k));
      if (u) this.#map.set(k, u);
    }
  }

  static async open(file: string): Promise<UsageLog> {
    return new UsageLog(await KvFile.open(file));
  }

  get(snapshot: string): Usage | undefined {
    return this.#map.get(snapshot);
  }

  /** Records a use of `snapshot` now. */
  touch(snapshot: string, now = Date.now()): void {
    const u = this.#map.get(snapshot) ?? { lastUsedMs: 0, count: 0 };
    this.#map.set(snapshot, { ...u, lastUsedMs: Math.max(u.lastUsedMs, now), count: u.count + 1 });
    this.#dirty.add(snapshot);
  }

  /** Remembers the measured size of a committed snapshot. */
  setSize(snapshot: string, size: number): void {
    const u = this.#map.get(snapshot) ?? { lastUsedMs: 0, count: 0 };
    this.#map.set(snapshot, { ...u, size });
    this.#dirty.add(snapshot);
  }

  /** Forgets a removed snapshot. */
  forget(snapshot: string): void {
    if (this.#map.delete(snapshot)) this.#dirty.add(snapshot);
  }

  /** Writes what changed since the last flush, then compacts the file when worth it. */
  async flush(): Promise<void> {
    const keys = [...this.#dirty];
    this.#dirty.clear();
    for (const k of keys) {
      const u = this.#map.get(k);
      await (u ? this.kv.set(k, JSON.stringify(u)) : this.kv.delete(k));
    }
    await this.kv.compact();
  }
}

function parse(v: string | undefined): Usage | undefined {
  if (v === undefined) return undefined;
  try {
    const u = JSON.parse(v) as Partial<Usage>;
    if (typeof u.lastUsedMs !== 'number' || typeof u.count !== 'number') return undefined;
    return {
      lastUsedMs: u.lastUsedMs,
      count: u.count,
      ...(typeof u.size === 'number' ? { size: u.size } : {}),
    };
  } catch {
    // A value this version does not read: the snapshot counts as never used.
    return undefined;
  }
}
