/**
 * The client's persistent file digest cache: the sha256 of a local file, valid while the file's
 * size, mtime (ns), ctime (ns) and inode are unchanged, so that a new `kiln build` process does not
 * read unchanged context files again.
 *
 * - Partitioned by local root (a build context, a named context directory): one file per root in
 *   the cache directory, named by a hash of the root's absolute path, holding that root's files
 *   by path relative to it. A build reads the files of the roots it serves, and nothing of the
 *   other contexts this machine ever built.
 * - A file is a header line (format and root), then one tab-separated line per file, written
 *   whole to a temp file and renamed, so a reader never sees half of it. A file that is missing
 *   or of another format or root is an empty cache, and so is a line that is not exactly what a
 *   save writes (both are replaced by the next save). Loading only splits the lines: a line is
 *   parsed when its path is looked up.
 * - Bounded: at most `maxEntries` lines a root, the entries looked up since open kept first; at
 *   most `maxFiles` roots and `maxBytes` in all, the roots used longest ago (file mtime: a save,
 *   or a load of a root whose digests did not change, renews it) removed first by each save.
 * - Not shared between processes: the last save of a root wins, which only costs a re-read of
 *   some files.
 */
import { createHash } from 'node:crypto';
import {
  mkdir,
  readFile,
  readdir,
  rename,
  stat,
  unlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import { join } from 'node:path';

const HEADER = 'kiln-context-digests v2';
/** Default bounds: ~100 bytes a line, so ~50 MB a root and 64 MB in all at most. */
const MAX_ENTRIES = 500_000;
const MAX_FILES = 64;
const MAX_BYTES = 64 * 1024 * 1024;
/** A root file's name: 32 hex digits of the sha256 of the root's absolute path. */
const ROOT_FILE = /^[0-9a-f]{32}$/;
/** A temp file a save that died left (`<name>.<pid>.tmp`), removed once this old. */
const STALE_TMP = /^[0-9a-f]{32}\.\d+\.tmp$/;
const STALE_TMP_MS = 10 * 60_000;

/**
 * What must be unchanged for a cached digest to hold: `size\tmtime_ns\tctime_ns\tino`, in
 * decimal (`@kiln/sys` `lstatDir` gives it; `stampOf` makes it from Node's BigIntStats).
 */
export type FileStamp = string;

interface Entry {
  stamp: FileStamp;
  digest: string;
}

export interface DigestCacheBounds {
  /** Lines kept a root. Default 500,000. */
  maxEntries?: number;
  /** Root files kept. Default 64. */
  maxFiles?: number;
  /** Bytes of root files kept in all (the file just saved is always kept). Default 64 MiB. */
  maxBytes?: number;
}

const DIGEST = /^sha256:[0-9a-f]{64}$/;
const STAMP = /^\d+\t-?\d+\t-?\d+\t\d+$/;
/** What follows the path in a line a save writes. */
const LINE_REST = /^\d+\t-?\d+\t-?\d+\t\d+\tsha256:[0-9a-f]{64}$/;

/** A path (or root) with a tab or newline cannot be written in this format: it is not cached. */
const unwritable = (s: string): boolean => /[\t\n]/.test(s);

const errCode = (e: unknown): unknown => (e as { code?: unknown } | null)?.code;

/** The cache directory: one {@link RootDigests} per root, and the bounds over all of them. */
export class FileDigestCache {
  readonly #dir: string | undefined;
  readonly #bounds: Required<DigestCacheBounds>;
  readonly #roots = new Map<string, RootDigests>();
  /** Bytes read from root files by this instance (what a build pays to load its roots). */
  bytesRead = 0;

  /** `dir`: where the cache persists; undefined keeps it in memory only. */
  constructor(dir?: string, bounds: DigestCacheBounds = {}) {
    this.#dir = dir;
    this.#bounds = {
      maxEntries: Math.max(1, bounds.maxEntries ?? MAX_ENTRIES),
      maxFiles: Math.max(1, bounds.maxFiles ?? MAX_FILES),
      maxBytes: Math.max(0, bounds.maxBytes ?? MAX_BYTES),
    };
  }

  /** The digests of the files under `root` (an absolute, resolved path), by path relative to it. */
  root(root: string): RootDigests {
    let r = this.#roots.get(root);
    if (!r) {
      const file =
        this.#dir === undefined || unwritable(root)
          ? undefined
          : join(this.#dir, createHash('sha256').update(root).digest('hex').slice(0, 32));
      r = new RootDigests(this, root, file, this.#bounds.maxEntries);
      this.#roots.set(root, r);
    }
    return r;
  }

  /** Writes every root that changed; resolves when written (errors are the caller's). */
  async save(): Promise<void> {
    await Promise.all([...this.#roots.values()].map((r) => r.save()));
  }

  /** Creates the directory; a file in its place (the one-file cache of v1) is replaced. */
  async ensureDir(): Promise<void> {
    const dir = this.#dir!;
    try {
      await mkdir(dir, { recursive: true });
    } catch (e) {
      if (errCode(e) !== 'EEXIST' && errCode(e) !== 'ENOTDIR') throw e;
      await unlink(dir);
      await mkdir(dir, { recursive: true });
    }
  }

  /**
   * Removes the root files used longest ago past `maxFiles` or `maxBytes` (never `keep`, the one
   * just saved), and temp files that a dead save left.
   */
  async evict(keep: string): Promise<void> {
    const dir = this.#dir!;
    const now = Date.now();
    const files: { path: string; mtimeMs: number; size: number }[] = [];
    for (const name of await readdir(dir)) {
      const path = join(dir, name);
      if (!ROOT_FILE.test(name) && !STALE_TMP.test(name)) continue;
      const st = await stat(path).catch(() => undefined);
      if (!st) continue;
      if (ROOT_FILE.test(name)) files.push({ path, mtimeMs: st.mtimeMs, size: st.size });
      else if (now - st.mtimeMs > STALE_TMP_MS) await unlink(path).catch(() => undefined);
    }
    files.sort((a, b) => b.mtimeMs - a.mtimeMs);
    const kept = files.find((f) => f.path === keep);
    let count = kept ? 1 : 0;
    let bytes = kept?.size ?? 0;
    for (const f of files) {
      if (f === kept) continue;
      count++;
      bytes += f.size;
      if (count > this.#bounds.maxFiles || bytes > this.#bounds.maxBytes)
        await unlink(f.path).catch(() => undefined);
    }
  }
}

/** One root's digests (see {@link FileDigestCache}). */
export class RootDigests {
  readonly #parent: FileDigestCache;
  readonly #root: string;
  readonly #file: string | undefined;
  readonly #max: number;
  /** Lines read from the file (not yet looked up in this process): path -> the rest of it. */
  #old = new Map<string, string>();
  /** Entries looked up or computed in this process (kept first on save). */
  readonly #used = new Map<string, Entry>();
  #loaded: Promise<void> | undefined;
  /** Whether the file held this root's digests when loaded (a save then only renews its mtime). */
  #found = false;
  #saving: Promise<void> = Promise.resolve();
  #dirty = false;
  #renewed = false;

  constructor(parent: FileDigestCache, root: string, file: string | undefined, max: number) {
    this.#parent = parent;
    this.#root = root;
    this.#file = file;
    this.#max = max;
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
      const buf = await readFile(this.#file);
      this.#parent.bytesRead += buf.length;
      text = buf.toString('utf8');
    } catch {
      return out; // missing or unreadable (or the v1 file in the directory's place): start empty
    }
    const lines = text.split('\n');
    if (lines[0] !== `${HEADER}\t${this.#root}`) return out;
    this.#found = true;
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i]!;
      const tab = line.indexOf('\t');
      if (tab > 0) out.set(line.slice(0, tab), line.slice(tab + 1));
    }
    return out;
  }

  /** The cached digest of `path` (relative to the root) if its stamp is unchanged. */
  get(path: string, stamp: FileStamp): string | undefined {
    const used = this.#used.get(path);
    if (used) return used.stamp === stamp ? used.digest : undefined;
    const rest = this.#old.get(path);
    if (rest === undefined) return undefined;
    // The line as a save writes it for this stamp, followed by a digest.
    if (rest.charCodeAt(stamp.length) !== 9 || !rest.startsWith(stamp)) return undefined;
    const digest = rest.slice(stamp.length + 1);
    if (!DIGEST.test(digest)) return undefined;
    this.#old.delete(path);
    this.#used.set(path, { stamp, digest });
    return digest;
  }

  /** Records `digest` for `path` with `stamp` (one that is not a stamp is not kept). */
  set(path: string, stamp: FileStamp, digest: string): void {
    this.#old.delete(path);
    if (!STAMP.test(stamp) || !DIGEST.test(digest)) return;
    this.#used.set(path, { stamp, digest });
    this.#dirty = true;
  }

  /**
   * Writes the root's file if anything changed, else renews its mtime once (the root was used),
   * then applies the directory's bounds; resolves when done (errors are the caller's).
   */
  save(): Promise<void> {
    const file = this.#file;
    if (file === undefined || !this.#loaded) return this.#saving;
    if (!this.#dirty) {
      if (this.#renewed || !this.#found) return this.#saving;
      this.#renewed = true;
      this.#saving = this.#saving.then(async () => {
        const now = new Date();
        await utimes(file, now, now);
      });
      return this.#saving;
    }
    this.#dirty = false;
    this.#renewed = true;
    this.#saving = this.#saving.then(async () => {
      const lines = [`${HEADER}\t${this.#root}`];
      for (const [path, e] of this.#used) {
        if (lines.length > this.#max) break;
        if (unwritable(path)) continue;
        lines.push(`${path}\t${e.stamp}\t${e.digest}`);
      }
      for (const [path, rest] of this.#old) {
        if (lines.length > this.#max) break;
        if (LINE_REST.test(rest)) lines.push(`${path}\t${rest}`);
      }
      await this.#parent.ensureDir();
      const tmp = `${file}.${process.pid}.tmp`;
      await writeFile(tmp, `${lines.join('\n')}\n`);
      await rename(tmp, file);
      this.#found = true;
      await this.#parent.evict(file);
    });
    return this.#saving;
  }
}
