/**
 * The worker's local cache index: cache key -> the committed snapshots of the vertex's outputs,
 * kept in a {@link KvFile} under the worker's state dir so a restarted worker keeps its cache.
 * (The cluster-wide index lives in the cache-store service; this one answers for what this worker
 * holds locally.)
 */
import { KvFile } from './kv-file.js';

export interface CacheRecord {
  key: string;
  /** Committed snapshot name per output index; null for an empty (scratch) output. */
  outputs: (string | null)[];
  created: number;
}

export class CacheIndex {
  private constructor(private readonly kv: KvFile) {}

  static async open(file: string): Promise<CacheIndex> {
    return new CacheIndex(await KvFile.open(file));
  }

  get(key: string): CacheRecord | undefined {
    const v = this.kv.get(key);
    if (v === undefined) return undefined;
    try {
      const r = JSON.parse(v) as Omit<CacheRecord, 'key'>;
      return Array.isArray(r.outputs) ? { key, outputs: r.outputs, created: r.created } : undefined;
    } catch {
      // Unreadable record: a miss, rewritten by the next set.
      return undefined;
    }
  }

  set(key: string, outputs: (string | null)[]): Promise<void> {
    return this.kv.set(key, JSON.stringify({ outputs, created: Date.now() }));
  }

  delete(key: string): Promise<void> {
    return this.kv.delete(key);
  }

  keys(): string[] {
    return this.kv.keys();
  }
}
