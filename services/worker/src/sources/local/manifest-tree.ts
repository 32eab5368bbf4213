/**
 * A local directory's manifest (`@kiln/bus` LocalManifest: the client's listing, synced through
 * the content store) made into a tree on disk, in full or as the difference from the tree of a
 * previous manifest.
 *
 * Contract:
 * - The manifest comes from a client: it is validated first ({@link validateManifest}): clean
 *   relative paths, no duplicates, every entry's parent is a directory entry listed before it,
 *   only directories, regular files (with a sha256 digest) and symlinks. A tree written from a
 *   valid manifest into an empty directory therefore never meets a symlink on the way to an entry;
 *   files are created with O_EXCL | O_NOFOLLOW, owners and times set without following links.
 *   The difference is applied through the root-confined primitives of `fs/` (a parent that
 *   resolves anywhere but where it should is refused).
 * - File content is read from the store by digest (verified on read), or for a small file from
 *   its pack (read whole and verified, the file's slice checked against its digest); at most 16
 *   files are written at once, each in a handful of syscalls (open, write, fchown/fchmod only when
 *   needed, futimes, close).
 * - Directory modes, owners and times are set last, deepest first: writing entries changes a
 *   directory's mtime, and a read-only directory must not stop its own entries from being written.
 */
import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { lchown, lutimes, mkdir, open, symlink, chmod } from 'node:fs/promises';
import type { LocalManifest, ManifestEntry } from '@kiln/bus';
import { forEachLimit } from '@kiln/common';
import { KilnError } from '@kiln/protocol';
import type { BlobStore, Digest } from '@kiln/store';
import { removeInRoot, resolveInRoot } from '../../fs/index.js';

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const DIGEST = /^sha256:[0-9a-f]{64}$/;
/** Files written at once. */
const CONCURRENCY = 16;
/** Files up to this size are read whole and written in one call. */
const SMALL = 1 << 20;
/** Packs kept in memory while their files are written (4 MiB each at most). */
const PACKS_KEPT = 8;

export class ManifestError extends KilnError {
  constructor(message: string, path: string) {
    super('SESSION_PROTOCOL', `the client's manifest ${message}`, { details: { path } });
  }
}

const typeOf = (e: ManifestEntry): number => e.mode & S_IFMT;

/**
 * Whether `p` is not a clean relative path: empty, absolute, or with an empty, `.` or `..`
 * segment, or a NUL. Without splitting it (a manifest of 5,000 files is validated at least twice
 * a build; `split('/').some(...)` and `posix.dirname` made that ~15-40 ms).
 */
function unsafePath(p: string): boolean {
  if (p === '' || p.includes('\0')) return true;
  for (let start = 0; start <= p.length;) {
    let end = p.indexOf('/', start);
    if (end < 0) end = p.length;
    const n = end - start;
    if (
      n === 0 ||
      (p.charCodeAt(start) === 0x2e && (n === 1 || (n === 2 && p.charCodeAt(start + 1) === 0x2e)))
    )
      return true;
    start = end + 1;
  }
  return false;
}

/** The parent of a clean relative path, '' for the root. */
const parentPath = (p: string): string => {
  const slash = p.lastIndexOf('/');
  return slash < 0 ? '' : p.slice(0, slash);
};

/** Throws a {@link ManifestError} unless `m` is safe to write (see the module contract). */
export function validateManifest(m: LocalManifest): void {
  if (!Array.isArray(m.entries)) throw new ManifestError('has no entry list', '');
  const dirs = new Set<string>(['']);
  const seen = new Set<string>();
  for (const e of m.entries) {
    const p = e.path;
    if (typeof p !== 'string' || unsafePath(p))
      throw new ManifestError(`names an unsafe path: ${String(p)}`, String(p));
    if (seen.has(p)) throw new ManifestError(`lists ${p} twice`, p);
    seen.add(p);
    const parent = parentPath(p);
    if (!dirs.has(parent))
      throw new ManifestError(`lists ${p} before (or without) its directory`, p);
    const t = typeOf(e);
    if (t === S_IFDIR) dirs.add(p);
    else if (t === S_IFREG) {
      if (typeof e.digest !== 'string' || !DIGEST.test(e.digest))
        throw new ManifestError(`has no digest for file ${p}`, p);
      if (!Number.isSafeInteger(e.size) || e.size < 0)
        throw new ManifestError(`has no size for file ${p}`, p);
      if (
        e.pack !== undefined &&
        (typeof e.pack !== 'string' ||
          !DIGEST.test(e.pack) ||
          !Number.isSafeInteger(e.offset) ||
          (e.offset ?? -1) < 0)
      )
        throw new ManifestError(`has a bad pack reference for ${p}`, p);
    } else if (t === S_IFLNK) {
      if (typeof e.linkname !== 'string') throw new ManifestError(`has no target for ${p}`, p);
    } else throw new ManifestError(`lists ${p} of an unsupported type`, p);
  }
}

const euid = process.geteuid?.() ?? 0;
const egid = process.getegid?.() ?? 0;
const umask = process.umask();

/**
 * Packs (many small files in one blob, `@kiln/bus` ManifestEntry.pack) read whole (verified) and
 * kept while their files are written; the least recently used go first. Entries are written in
 * path order and packs are filled in path order, so each pack is read about once.
 */
class Packs {
  readonly #packs = new Map<string, Promise<Buffer>>();

  constructor(readonly store: BlobStore) {}

  /** The bytes of a packed file, checked against its digest. */
  async slice(e: ManifestEntry): Promise<Buffer> {
    const pack = e.pack!;
    let p = this.#packs.get(pack);
    if (p) this.#packs.delete(pack);
    else {
      p = (async () => {
        const chunks: Buffer[] = [];
        for await (const c of await this.store.get(pack as Digest)) chunks.push(c as Buffer);
        return Buffer.concat(chunks);
      })();
      p.catch(() => this.#packs.delete(pack));
    }
    this.#packs.set(pack, p);
    while (this.#packs.size > PACKS_KEPT) this.#packs.delete(this.#packs.keys().next().value!);
    const buf = await p;
    const off = e.offset ?? 0;
    const data = buf.subarray(off, off + e.size);
    if (
      data.length !== e.size ||
      `sha256:${createHash('sha256').update(data).digest('hex')}` !== e.digest
    )
      throw new ManifestError(`names bytes of pack ${pack} that are not ${e.path}`, e.path);
    return data;
  }
}

/** Creates file `host` (absent) with the entry's content, owner, mode and mtime. */
async function writeEntryFile(packs: Packs, e: ManifestEntry, host: string): Promise<void> {
  const perm = e.mode & 0o7777;
  const packed = e.pack !== undefined ? await packs.slice(e) : undefined;
  const src = packed ? undefined : await packs.store.get(e.digest as Digest);
  const fh = await open(
    host,
    constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
    perm & 0o777,
  );
  try {
    if (packed) {
      if (packed.length > 0) await fh.write(packed);
    } else if (e.size <= SMALL) {
      const chunks: Buffer[] = [];
      for await (const c of src!) chunks.push(c as Buffer);
      if (chunks.length > 0)
        await fh.write(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks));
    } else {
      for await (const c of src!) await fh.write(c as Buffer);
    }
    const chown = e.uid !== euid || e.gid !== egid;
    if (chown) await fh.chown(e.uid, e.gid);
    // chown clears setuid/setgid; the umask may have cleared permission bits.
    if (chown ? perm & 0o7000 : perm & 0o7000 || perm & umask) await fh.chmod(perm);
    const t = new Date(e.mtimeMs);
    await fh.utimes(t, t);
  } finally {
    await fh.close();
  }
}

async function writeEntryLink(e: ManifestEntry, host: string): Promise<void> {
  await symlink(e.linkname ?? '', host);
  if (e.uid !== euid || e.gid !== egid) await lchown(host, e.uid, e.gid);
  const t = new Date(e.mtimeMs);
  await lutimes(host, t, t);
}

async function stampDir(e: ManifestEntry, host: string): Promise<void> {
  await lchown(host, e.uid, e.gid);
  await chmod(host, e.mode & 0o7777);
  const t = new Date(e.mtimeMs);
  await lutimes(host, t, t);
}

const join = (root: string, rel: string): string => (rel === '' ? root : `${root}/${rel}`);

/**
 * Writes the tree of `m` (validated here) into `root`, an empty directory the caller owns and
 * nobody else changes meanwhile.
 */
export async function writeManifestTree(
  store: BlobStore,
  m: LocalManifest,
  root: string,
): Promise<void> {
  validateManifest(m);
  const dirs = m.entries.filter((e) => typeOf(e) === S_IFDIR);
  // Parents are listed before their children, so each mkdir finds its parent made.
  for (const d of dirs) await mkdir(join(root, d.path), { mode: 0o700 });
  const leaves = m.entries.filter((e) => typeOf(e) !== S_IFDIR);
  const packs = new Packs(store);
  await forEachLimit(leaves, CONCURRENCY, (e) =>
    typeOf(e) === S_IFREG
      ? writeEntryFile(packs, e, join(root, e.path))
      : writeEntryLink(e, join(root, e.path)),
  );
  for (const d of dirs.reverse()) await stampDir(d, join(root, d.path));
}

/** What {@link applyManifestDiff} changed. */
export interface DiffStats {
  removed: number;
  written: number;
  restamped: number;
}

const sameContent = (a: ManifestEntry, b: ManifestEntry): boolean =>
  typeOf(a) === typeOf(b) &&
  (typeOf(a) !== S_IFREG || a.digest === b.digest) &&
  (typeOf(a) !== S_IFLNK || a.linkname === b.linkname);

const sameMeta = (a: ManifestEntry, b: ManifestEntry): boolean =>
  a.mode === b.mode && a.uid === b.uid && a.gid === b.gid && a.mtimeMs === b.mtimeMs;

/**
 * Turns `root`, holding the tree of `prev` (validated when it was written), into the tree of
 * `next` (validated here): removes what went away or changed type or content, writes what is new
 * or changed, restamps what changed only in mode, owner or time, and the directories whose
 * entries changed.
 */
export async function applyManifestDiff(
  store: BlobStore,
  prev: LocalManifest,
  next: LocalManifest,
  root: string,
): Promise<DiffStats> {
  validateManifest(next);
  const before = new Map(prev.entries.map((e) => [e.path, e]));
  const after = new Map(next.entries.map((e) => [e.path, e]));
  const stats: DiffStats = { removed: 0, written: 0, restamped: 0 };
  /** Directories whose entries change: their mtime must be set again. */
  const touched = new Set<string>();
  // Removals, outermost first (what is below a removed directory goes with it).
  const goneSet = new Set<string>();
  const removedBelow = (p: string): boolean => {
    for (let q = p; q !== ''; q = parentPath(q)) if (goneSet.has(q)) return true;
    return false;
  };
  for (const e of prev.entries) {
    const n = after.get(e.path);
    if ((n && sameContent(e, n)) || removedBelow(e.path)) continue;
    goneSet.add(e.path);
    await removeInRoot(root, e.path, true);
    touched.add(parentPath(e.path));
    stats.removed++;
  }
  const create: ManifestEntry[] = [];
  const restamp: ManifestEntry[] = [];
  for (const e of next.entries) {
    const b = before.get(e.path);
    if (!b || removedBelow(e.path)) create.push(e);
    else if (!sameMeta(b, e)) restamp.push(e);
  }
  /** The host path of a new entry; its parent must resolve to itself (no symlink on the way). */
  const hostOf = async (p: string): Promise<string> => {
    const parent = parentPath(p);
    const resolved = await resolveInRoot(root, parent === '' ? '/' : parent);
    if (resolved !== join(root, parent)) throw new ManifestError(`leads ${p} through a link`, p);
    return join(root, p);
  };
  const newDirs: ManifestEntry[] = [];
  for (const e of create) {
    touched.add(parentPath(e.path));
    if (typeOf(e) !== S_IFDIR) continue;
    await mkdir(await hostOf(e.path), { mode: 0o700 });
    newDirs.push(e);
  }
  const packs = new Packs(store);
  await forEachLimit(
    create.filter((e) => typeOf(e) !== S_IFDIR),
    CONCURRENCY,
    async (e) => {
      const host = await hostOf(e.path);
      if (typeOf(e) === S_IFREG) await writeEntryFile(packs, e, host);
      else await writeEntryLink(e, host);
    },
  );
  stats.written = create.length;
  for (const e of restamp) {
    if (typeOf(e) === S_IFDIR) continue; // below, with the other directories
    const host = await hostOf(e.path);
    await lchown(host, e.uid, e.gid);
    if (typeOf(e) !== S_IFLNK) await chmod(host, e.mode & 0o7777);
    const t = new Date(e.mtimeMs);
    await lutimes(host, t, t);
    stats.restamped++;
  }
  const dirs = new Map<string, ManifestEntry>();
  for (const e of [...newDirs, ...restamp.filter((r) => typeOf(r) === S_IFDIR)])
    dirs.set(e.path, e);
  for (const p of touched) {
    const d = after.get(p);
    if (d) dirs.set(p, d);
  }
  const order = [...dirs.values()].sort((a, b) => (a.path < b.path ? 1 : a.path > b.path ? -1 : 0));
  for (const d of order) await stampDir(d, await hostOf(d.path));
  return stats;
}
