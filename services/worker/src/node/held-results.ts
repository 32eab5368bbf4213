/**
 * The results this worker holds: result id -> committed snapshot, persisted under the state dir
 * (a {@link KvFile}: recency order, `delete` forgets), so a restarted worker still serves and
 * advertises what it holds. Not safe for two processes on one state dir (neither is the rest of
 * the state dir).
 */
import { KvFile } from '../cache/kv-file.js';

export class HeldResults {
  private constructor(private readonly kv: KvFile) {}

  static async open(file: string): Promise<HeldResults> {
    return new HeldResults(await KvFile.open(file));
  }

  get(id: string): string | undefined {
    return this.kv.get(id);
  }

  /** Remembers (or refreshes) a held result; resolves once it is on disk. */
  set(id: string, snapshot: string): Promise<void> {
    return this.kv.set(id, snapshot);
  }

  /** Forgets a result (its snapshot is gone). */
  delete(id: string): Promise<void> {
    return this.kv.delete(id);
  }

  /** Held result ids, oldest first. */
  ids(): string[] {
    return this.kv.keys();
  }

  /** Rewrites the records file without superseded lines when they dominate it. */
  compact(): Promise<void> {
    return this.kv.compact();
  }
}
