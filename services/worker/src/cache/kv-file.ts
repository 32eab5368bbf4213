/**
 * A small persistent string map: an append-only JSON-lines file of `[key, value]` (value `null`
 * deletes), loaded whole at open; the last line for a key wins, and iteration order is recency
 * (a set moves its key to the end). Used for what a worker keeps across restarts: the results it
 * holds, their content checksums, its kept local contexts, its layers' diffIDs and blobs. A torn last line after a crash was never acknowledged and is skipped. One process per file.
 */
import { appendFile, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';

export class KvFile {
  private readonly map = new Map<string, string>();
  private writes: Promise<void> = Promise.resolve();
  /** Lines in the file (superseded ones included): what {@link compact} reclaims. */
  private lines = 0;

  private constructor(private readonly file: string) {}

  static async open(file: string): Promise<KvFile> {
    const kv = new KvFile(file);
    await mkdir(dirname(file), { recursive: true });
    let text = '';
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    for (const line of text.split('\n')) {
      if (!line) continue;
      kv.lines++;
      let entry: unknown;
      try {
        entry = JSON.parse(line);
      } catch {
        // A torn last line after a crash was never acknowledged: skip it.
        continue;
      }
      if (!Array.isArray(entry) || typeof entry[0] !== 'string') continue;
      const [k, v] = entry as [string, unknown];
      kv.map.delete(k);
      if (typeof v === 'string') kv.map.set(k, v);
    }
    return kv;
  }

  get(k: string): string | undefined {
    return this.map.get(k);
  }

  /** Sets (or refreshes) a value; resolves once it is on disk. */
  set(k: string, v: string): Promise<void> {
    const same = this.map.get(k) === v;
    this.map.delete(k);
    this.map.set(k, v);
    return same ? this.writes : this.append([k, v]);
  }

  delete(k: string): Promise<void> {
    if (!this.map.delete(k)) return this.writes;
    return this.append([k, null]);
  }

  /** Keys, least recently set first. */
  keys(): string[] {
    return [...this.map.keys()];
  }

  /**
   * Rewrites the file with one line per live key (atomically: a temp file renamed over it) when
   * superseded lines outnumber live ones; the append-only file otherwise grows with every set.
   * Queued after the writes already made; resolves once done (or at once when not worth it).
   */
  compact(): Promise<void> {
    if (this.lines <= 2 * this.map.size + 1024) return this.writes;
    this.writes = this.writes.then(async () => {
      const body = [...this.map].map((e) => `${JSON.stringify(e)}\n`).join('');
      await writeFile(`${this.file}.tmp`, body);
      await rename(`${this.file}.tmp`, this.file);
      this.lines = this.map.size;
    });
    return this.writes;
  }

  private append(entry: [string, string | null]): Promise<void> {
    const line = `${JSON.stringify(entry)}\n`;
    this.lines++;
    this.writes = this.writes.then(() => appendFile(this.file, line));
    return this.writes;
  }
}
