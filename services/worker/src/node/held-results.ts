/**
 * The results this worker holds: result id -> committed snapshot, persisted as an append-only
 * JSON-lines file under the state dir (the last line for an id wins; a `null` snapshot forgets
 * it), so a restarted worker still serves and advertises what it holds. Not safe for two
 * processes on one state dir (neither is the rest of the state dir).
 */
import { appendFile, mkdir, readFile } from 'node:fs/promises';
import { dirname } from 'node:path';

export class HeldResults {
  /** Insertion order is recency: a re-set id moves to the end. */
  readonly #map = new Map<string, string>();
  #writes: Promise<void> = Promise.resolve();

  private constructor(private readonly file: string) {}

  static async open(file: string): Promise<HeldResults> {
    const h = new HeldResults(file);
    await mkdir(dirname(file), { recursive: true });
    let text = '';
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    for (const line of text.split('\n')) {
      if (!line) continue;
      let entry: unknown;
      try {
        entry = JSON.parse(line);
      } catch {
        // A torn last line after a crash was never acknowledged: skip it.
        continue;
      }
      if (!Array.isArray(entry) || typeof entry[0] !== 'string') continue;
      const [id, snap] = entry as [string, unknown];
      h.#map.delete(id);
      if (typeof snap === 'string') h.#map.set(id, snap);
    }
    return h;
  }

  get(id: string): string | undefined {
    return this.#map.get(id);
  }

  /** Remembers (or refreshes) a held result; resolves once it is on disk. */
  set(id: string, snapshot: string): Promise<void> {
    if (this.#map.get(id) === snapshot) {
      this.#map.delete(id);
      this.#map.set(id, snapshot);
      return this.#writes;
    }
    this.#map.delete(id);
    this.#map.set(id, snapshot);
    return this.#append([id, snapshot]);
  }

  /** Forgets a result (its snapshot is gone). */
  delete(id: string): Promise<void> {
    if (!this.#map.delete(id)) return this.#writes;
    return this.#append([id, null]);
  }

  /** Held result ids, oldest first. */
  ids(): string[] {
    return [...this.#map.keys()];
  }

  #append(entry: [string, string | null]): Promise<void> {
    const line = `${JSON.stringify(entry)}\n`;
    this.#writes = this.#writes.then(() => appendFile(this.file, line));
    return this.#writes;
  }
}
