/**
 * A small persistent string map: an append-only JSON-lines file, loaded whole at open, the last
 * line for a key winning. For facts that never change once known (the content checksum of a path
 * in an immutable snapshot), so a later process does not recompute them.
 */
import { appendFile, mkdir, readFile } from 'node:fs/promises';
import { dirname } from 'node:path';

export class KvFile {
  private readonly map = new Map<string, string>();
  private writes: Promise<void> = Promise.resolve();

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
      try {
        const [k, v] = JSON.parse(line) as [string, string];
        if (typeof k === 'string' && typeof v === 'string') kv.map.set(k, v);
      } catch {
        // A torn last line after a crash was never acknowledged: skip it.
        continue;
      }
    }
    return kv;
  }

  get(k: string): string | undefined {
    return this.map.get(k);
  }

  set(k: string, v: string): Promise<void> {
    this.map.set(k, v);
    const line = `${JSON.stringify([k, v])}\n`;
    this.writes = this.writes.then(() => appendFile(this.file, line));
    return this.writes;
  }
}
