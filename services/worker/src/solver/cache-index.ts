/**
 * The worker's local cache index: cache key -> the committed snapshots of the vertex's outputs.
 * Persisted as an append-only JSON-lines file under the worker's state dir, so a restarted worker
 * keeps its cache; the last record for a key wins. (The cluster-wide index lives in the
 * cache-store service; this one answers for what this worker holds locally.)
 */
import { appendFile, mkdir, readFile } from 'node:fs/promises';
import { dirname } from 'node:path';

export interface CacheRecord {
  key: string;
  /** Committed snapshot name per output index; null for an empty (scratch) output. */
  outputs: (string | null)[];
  created: number;
}

export class CacheIndex {
  private readonly records = new Map<string, CacheRecord>();
  private writes: Promise<void> = Promise.resolve();

  private constructor(private readonly file: string) {}

  static async open(file: string): Promise<CacheIndex> {
    const idx = new CacheIndex(file);
    await mkdir(dirname(file), { recursive: true });
    let text = '';
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    for (const line of text.split('\n')) {
      if (!line.trim()) continue;
      try {
        const r = JSON.parse(line) as CacheRecord;
        if (r.key && Array.isArray(r.outputs)) idx.records.set(r.key, r);
      } catch {
        // A torn last line after a crash: that record was never acknowledged; skip it.
        continue;
      }
    }
    return idx;
  }

  get(key: string): CacheRecord | undefined {
    return this.records.get(key);
  }

  async set(key: string, outputs: (string | null)[]): Promise<void> {
    const r: CacheRecord = { key, outputs, created: Date.now() };
    this.records.set(key, r);
    const line = `${JSON.stringify(r)}\n`;
    this.writes = this.writes.then(() => appendFile(this.file, line));
    await this.writes;
  }

  delete(key: string): void {
    this.records.delete(key);
  }

  keys(): IterableIterator<string> {
    return this.records.keys();
  }
}
