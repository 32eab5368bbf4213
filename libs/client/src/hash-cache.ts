/**
 * The client's persistent file digest cache: the sha256 of a local file by absolute path, valid
 * while the file's size, mtime (ns), ctime (ns) and inode are unchanged, so that a new `kiln build`
 * process does not read unchanged context files again.
 *
 * - One small text file (a header line, then one tab-separated line per file), written whole to a
 *   temp file and renamed, so a reader never sees half of it. A file that is missing or of
 *   another format is ignored, and so is a line that is not exactly what a save writes (both are
 *   replaced by the next save). Loading only splits the lines: a line is parsed when its path is
 *   looked up (a build of one context does not parse the digests of every other context).
 * - Bounded: at most `maxEntries` lines; the entries looked up since open are kept first.
 * - Not shared between processes: the last save wins, which only costs a re-read of some files.
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';

const HEADER = 'kiln-context-digests v1';
/** Default bound: ~100 bytes a line, so ~50 MB at most. */
const MAX_ENTRIES = 500_000;

/** What must be unchanged for a cached digest to hold. */
export interface FileStamp {
  size: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
  ino: bigint;
}

interface Entry extends FileStamp {
  digest: string;
}

const DIGEST = /^sha256:[0-9a-f]{64}$/;
/** What follows the path in a line a save writes. */
const LINE_REST = /^\d+\t\d+\t\d+\t\d+\tsha256:[0-9a-f]{64}$/;

/** A stamp as a line holds it. */
const stampText = (st: FileStamp): string => `${st.size}\t${st.mtimeNs}\t${st.ctimeNs}\t${st.ino}`;

const sameStamp = (a: FileStamp, b: FileStamp): boolean =>
  a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs && a.ino === b.ino;

export class FileDigestCache {
  readonly #file: string | undefined;
  readonly #max: number;
  /** Lines read from the file (not yet looked up in this process): path -> the rest of it. */
  #old = new Map<string, string>();
  /** Entries looked up or computed in this process (kept first on save). */
  readonly #used = new Map<string, Entry>();
  #loaded: Promise<void> | undefined;
  #saving: Promise<void> = Promise.resolve();
  #dirty = false;

  /** `file`: where the cache persists; undefined keeps it in memory only. */
  constructor(file?: string, maxEntries = MAX_ENTRIES) {
    this.#file = file;
    this.#max = Math.max(1, maxEntries);
  }

  /** Loads the file once; a missing or corrupt file is an empty cache. */
  load(): Promise<void> {
    this.#loaded ??= this.#read().then((m) => {
      this.#old = m;
    });
    return this.#loaded;
  }

  async #read(): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    if (this.#file === undefined) return out;
    let text: string;
    try {
      text = await readFile(this.#file, 'utf8');
    } catch {
      return out; // missing or unreadable: start empty
    }
    const lines = text.split('\n');
    if (lines[0] !== HEADER) return out;
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i]!;
      const tab = line.indexOf('\t');
      if (tab > 0) out.set(line.slice(0, tab), line.slice(tab + 1));
    }
    return out;
  }

  /** The cached digest of `path` if its stamp is unchanged. */
  get(path: string, st: FileStamp): string | undefined {
    const used = this.#used.get(path);
    if (used) return sameStamp(used, st) ? used.digest : undefined;
    const rest = this.#old.get(path);
    if (rest === undefined) return undefined;
    // The line as a save writes it for this stamp, followed by a digest.
    const prefix = `${stampText(st)}\t`;
    const digest = rest.slice(prefix.length);
    if (!rest.startsWith(prefix) || !DIGEST.test(digest)) return undefined;
    this.#old.delete(path);
    this.#used.set(path, { ...st, digest });
    return digest;
  }

  set(path: string, st: FileStamp, digest: string): void {
    this.#old.delete(path);
    this.#used.set(path, { ...st, digest });
    this.#dirty = true;
  }

  /** Writes the cache if anything changed; resolves when written (errors are the caller's). */
  save(): Promise<void> {
    const file = this.#file;
    if (file === undefined || !this.#dirty) return this.#saving;
    this.#dirty = false;
    this.#saving = this.#saving.then(async () => {
      const lines = [HEADER];
      for (const [path, e] of this.#used) {
        if (lines.length > this.#max) break;
        // A path with a tab or newline cannot be written in this format: it is just not cached.
        if (/[\t\n]/.test(path)) continue;
        lines.push(`${path}\t${stampText(e)}\t${e.digest}`);
      }
      for (const [path, rest] of this.#old) {
        if (lines.length > this.#max) break;
        if (LINE_REST.test(rest)) lines.push(`${path}\t${rest}`);
      }
      await mkdir(dirname(file), { recursive: true });
      const tmp = `${file}.${process.pid}.tmp`;
      await writeFile(tmp, `${lines.join('\n')}\n`);
      await rename(tmp, file);
    });
    return this.#saving;
  }
}
