import {
  chmodSync,
  closeSync,
  constants,
  lchownSync,
  linkSync,
  lutimesSync,
  mkdirSync,
  openSync,
  symlinkSync,
  utimesSync,
  writev,
  writevSync,
} from 'node:fs';
import { readdir, realpath, rm } from 'node:fs/promises';
import { promisify } from 'node:util';
import { dirname, join, posix } from 'node:path';
import type { Duplex, Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { KilnError } from '@kiln/protocol';
import { mknod } from '@kiln/sys';
import { DigestingStream } from '@kiln/store';
import type { Digest } from '@kiln/store';
import * as tar from 'tar-stream';
import { entryXattrs, keepPaxXattrs } from './tar-xattrs.js';
import { writeXattrs, xattrTarget } from './xattr.js';
import type { XattrTarget } from './xattr.js';
import { autoDecompress } from './compression.js';
import type { Compression } from './compression.js';
import { LayerError, LayerErrorCode } from './errors.js';
import { FsError, FsErrorCode } from './fs-errors.js';
import { displayPath, lstatOrUndefinedSync, resolveInRootSync } from './root-path.js';
import { SMALL_FILE, yielder } from './sync-fs.js';

const WHITEOUT_PREFIX = '.wh.';
const WHITEOUT_META_PREFIX = '.wh..wh.';
const WHITEOUT_OPAQUE = '.wh..wh..opq';

/**
 * Bounds on what one tar may unpack to (a 2 MB `.tar.gz` can hold 2 GiB of zeros). Checked from
 * each entry's header before its data is written, so nothing past the bound is ever written.
 */
export interface TarLimits {
  /** The regular files' bytes, together. */
  maxBytes?: number;
  /** Entries of every kind (whiteouts and directories included). */
  maxEntries?: number;
}

export interface TarApplyOptions {
  /** Bounds on the unpacked size and entries; none by default. */
  limits?: TarLimits;
  /**
   * Apply the image-spec's changeset rules: `.wh.<name>` deletes `<name>`, `.wh..wh..opq` empties
   * its directory of everything not in this tar, other `.wh..wh.` names are skipped. Default true
   * (a layer); false for an archive unpacked by ADD or a local export, whose `.wh.` names are
   * plain files.
   */
  whiteouts?: boolean;
  /** Create character and block devices; otherwise such entries are {@link LayerErrorCode.Unsafe}. Default false. */
  allowDevices?: boolean;
  /** Set owners (needs root). Default: true when running as root or when `owner` is given. */
  chown?: boolean;
  /** Owner of every entry instead of the archive's (ADD's `--chown`). */
  owner?: { uid: number; gid: number } | undefined;
  /**
   * How failures to set extended attributes are treated. `strict` (default, layers): anything but
   * ENOTSUP (and EPERM when not root) is {@link LayerErrorCode.Io}. `best-effort` (ADD, as moby's
   * untar): every failure is ignored.
   */
  xattrs?: 'strict' | 'best-effort';
}

export interface ApplyOptions {
  /** Bounds on the unpacked size and entries; none by default. */
  limits?: TarLimits;
  /** Create character and block devices; otherwise such entries are {@link LayerErrorCode.Unsafe}. Default false. */
  allowDevices?: boolean;
  /** Set owners from the archive (needs root). Default: true when running as root. */
  chown?: boolean;
}

export interface ApplyResult {
  /** Compression detected from the stream's magic bytes. */
  compression: Compression;
  /** sha256 of the uncompressed tar: compare with the image config's `rootfs.diff_ids`. */
  diffID: Digest;
  /** Bytes of the uncompressed tar. */
  size: number;
  /** Tar entries processed (whiteouts included). */
  entries: number;
}

/** Bytes gathered before one write of a large file: each write is a trip to the thread pool. */
const WRITE_BATCH = 1024 * 1024;

const writevAsync = promisify(writev);

/**
 * Writes `data` to `fd` in order: a small file (up to {@link SMALL_FILE}) gathered and written
 * synchronously, a larger one in writes of about {@link WRITE_BATCH} through the thread pool (a
 * large write may wait for the disk). A short write (a full disk) writes the rest again, which
 * then fails or completes.
 */
async function writeData(fd: number, data: AsyncIterable<Buffer>, size: number): Promise<void> {
  const sync = size <= SMALL_FILE;
  let batch: Buffer[] = [];
  let n = 0;
  const flush = async (): Promise<void> => {
    let rest = batch;
    let left = n;
    batch = [];
    n = 0;
    while (left > 0) {
      const written = sync ? writevSync(fd, rest) : (await writevAsync(fd, rest)).bytesWritten;
      left -= written;
      if (left > 0) rest = [Buffer.concat(rest).subarray(written)];
    }
  };
  for await (const chunk of data) {
    batch.push(chunk);
    n += chunk.length;
    if (!sync && n >= WRITE_BATCH) await flush();
  }
  await flush();
}

interface PendingDir {
  path: string;
  mtime: Date;
}

/**
 * Applies an OCI layer (plain, gzip or zstd: detected) to `rootDir`: {@link applyTar} with
 * whiteouts, and the diffID of the uncompressed tar computed on the way. A source that errors (a
 * `BlobStore` read whose digest does not verify) fails the apply with its error.
 */
export async function applyLayer(
  source: Readable,
  rootDir: string,
  opts: ApplyOptions = {},
): Promise<ApplyResult> {
  const root = await realpath(rootDir);
  const { compression, tar: tarStream } = await autoDecompress(source).catch((err: unknown) => {
    source.destroy();
    throw err;
  });
  const hasher = new DigestingStream();
  try {
    const { entries } = await unpack(
      [tarStream, hasher],
      root,
      { ...opts, whiteouts: true },
      source,
    );
    return { compression, diffID: hasher.digest, size: hasher.size, entries };
  } catch (err) {
    source.destroy();
    throw err;
  }
}

/**
 * The one tar applier: unpacks an uncompressed tar stream into `rootDir` with containerd's rules
 * (`archive.applyNaive`), which every real-world image satisfies:
 *
 * - names are cleaned and rooted: `/`, `./`, absolute names and `..` that stays inside are fine;
 *   a name whose `..` climbs above the root is {@link LayerErrorCode.Unsafe} (moby's breakout
 *   check); an entry that is the root itself is skipped (the root keeps its own metadata);
 * - the parent path is resolved inside the root as if it were `/` ({@link resolveInRoot}): a
 *   symlink met on the way is followed, an absolute target re-rooted and `..` clamped at the
 *   root, never refused; missing parents are created (0755); the last component is never
 *   followed (an existing entry is replaced unless both are directories);
 * - a hardlink's target is cleaned the same way, its parents resolved inside the root; it must
 *   exist and not be a directory ({@link LayerErrorCode.Invalid});
 * - devices only with `allowDevices`; whiteouts and opaque directories when `whiteouts`.
 *
 * So nothing is ever written outside `rootDir`, as long as nobody else modifies it during the
 * apply. On failure the root holds a partial tar: callers apply into a fresh snapshot (or scratch
 * copy) and discard it. Errors are {@link LayerError}s naming the entry.
 *
 * Extended attributes (PAX `SCHILY.xattr.*`, parsed byte-exact) are set once every entry is in,
 * with one `setfattr --restore` (lsetxattr: a symlink's own attributes), on each entry that still
 * is the inode this tar created under a parent that still resolves to itself; after chown, which
 * would clear `security.capability`. `trusted.overlay.*` and `security.selinux` are never set; see
 * {@link TarApplyOptions.xattrs} for failures. A malformed name (empty, NUL, over 255 bytes) or a
 * value over 64 KiB is {@link LayerErrorCode.Invalid}.
 */
export async function applyTar(
  tarStream: Readable,
  rootDir: string,
  opts: TarApplyOptions = {},
): Promise<{ entries: number }> {
  return unpack([tarStream], await realpath(rootDir), opts);
}

/**
 * {@link applyTar} of the tar that comes out of `streams` piped in turn, into `root` (a real
 * path). Nothing is awaited before the pipeline is set up: entries and errors emitted meanwhile
 * would be lost.
 */
async function unpack(
  streams: [Readable, ...Duplex[]],
  root: string,
  opts: TarApplyOptions,
  source?: Readable,
): Promise<{ entries: number }> {
  const extract = tar.extract();
  keepPaxXattrs(extract);
  const feeding = pipeline([...streams, extract]);
  // Observed below; this keeps an early failure from being reported as unhandled meanwhile.
  feeding.catch(() => undefined);

  const ctx: EntryContext = {
    whiteouts: opts.whiteouts ?? true,
    allowDevices: opts.allowDevices ?? false,
    chown: opts.chown ?? (opts.owner !== undefined || process.getuid?.() === 0),
    owner: opts.owner,
    unpacked: new Set<string>(),
    dirs: [],
    xattrs: new Map<string, XattrTarget>(),
  };
  let entries = 0;
  let bytes = 0;
  const maxBytes = opts.limits?.maxBytes ?? Infinity;
  const maxEntries = opts.limits?.maxEntries ?? Infinity;
  let current: string | undefined;
  // Entries are applied with synchronous metadata calls: yield now and then.
  const tick = yielder();
  try {
    for await (const entry of extract) {
      await tick();
      const header = entry.header;
      current = header.name;
      entries++;
      if (entries > maxEntries) throw limitExceeded('maxEntries', maxEntries, 'entries', current);
      if ((header.type ?? 'file') === 'file' || header.type === 'contiguous-file') {
        bytes += header.size ?? 0;
        if (bytes > maxBytes) throw limitExceeded('maxBytes', maxBytes, 'bytes', current);
      }
      const data = entry as AsyncIterable<Buffer>;
      const consumed = await applyEntry(root, header, data, ctx);
      if (!consumed) entry.resume();
    }
    await feeding;
    current = undefined;
    await setXattrs([...ctx.xattrs.values()], opts.xattrs ?? 'strict');
    // Directory mtimes last: creating their children changed them.
    // A later entry may have replaced or removed a directory: only stamp what is still one.
    for (const d of ctx.dirs.reverse()) {
      if (lstatOrUndefinedSync(d.path)?.isDirectory()) utimesSync(d.path, d.mtime, d.mtime);
    }
  } catch (err) {
    extract.destroy();
    streams[0].destroy();
    source?.destroy();
    await Promise.allSettled([feeding]);
    throw toLayerError(err, current);
  }
  return { entries };
}

function limitExceeded(limit: string, max: number, what: string, entry: string): LayerError {
  return new LayerError(
    LayerErrorCode.LimitExceeded,
    `the tar unpacks to more than ${max} ${what} (the applier's ${limit})`,
    { entry, details: { limit, max } },
  );
}

function toLayerError(err: unknown, entry: string | undefined): KilnError {
  if (err instanceof FsError) {
    // A symlink loop on the way: the entry cannot be placed anywhere safe.
    const kind =
      err.code === FsErrorCode.SymlinkLoop ? LayerErrorCode.Unsafe : LayerErrorCode.Invalid;
    return new LayerError(kind, err.message, { cause: err, entry });
  }
  if (err instanceof KilnError) return err;
  const msg = err instanceof Error ? err.message : String(err);
  const code = (err as NodeJS.ErrnoException).code;
  // tar-stream reports malformed archives as plain errors without an errno code.
  const kind = code === undefined ? LayerErrorCode.Invalid : LayerErrorCode.Io;
  return new LayerError(kind, `applying layer: ${msg.split(', ')[0]}`, { cause: err, entry });
}

interface EntryContext {
  whiteouts: boolean;
  allowDevices: boolean;
  chown: boolean;
  owner: { uid: number; gid: number } | undefined;
  /** Every host path this tar wrote, and their parents (kept by a later opaque whiteout). */
  unpacked: Set<string>;
  dirs: PendingDir[];
  /** Extended attributes to set at the end, by host path. */
  xattrs: Map<string, XattrTarget>;
}

/**
 * A tar name (or hardlink target) cleaned and rooted: relative to the root, no leading `/`, `.`
 * or `..` components; `''` for the root itself. A `..` that climbs above the root is unsafe.
 */
export function entryPath(name: string, entry: string = name): string {
  if (name.includes('\0'))
    throw new LayerError(LayerErrorCode.Invalid, 'NUL byte in path', { entry });
  const rel = posix.normalize(`./${name}`);
  if (rel === '..' || rel.startsWith('../')) {
    throw new LayerError(LayerErrorCode.Unsafe, '".." leads outside the root', {
      entry,
      details: { path: name },
    });
  }
  const clean = rel.replace(/\/+$/, '');
  return clean === '.' ? '' : clean;
}

/**
 * The host directory `parent` (a clean root-relative path) names, resolved inside `root`; with
 * `create`, missing directories are made (0755). Without it, undefined when it is not a directory.
 */
function parentDir(root: string, parent: string, create: boolean): string | undefined {
  const host = resolveInRootSync(root, parent);
  const st = lstatOrUndefinedSync(host);
  if (st?.isDirectory()) return host;
  if (!create) return undefined;
  try {
    // Every existing component of `host` is a real directory (resolveInRoot followed the links).
    mkdirSync(host, { recursive: true, mode: 0o755 });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOTDIR' && code !== 'EEXIST') throw err;
    throw new LayerError(LayerErrorCode.Invalid, 'parent path is not a directory', {
      cause: err,
      details: { path: displayPath(root, host) },
    });
  }
  return host;
}

/** Applies one entry; returns whether it consumed the entry's data stream. */
async function applyEntry(
  root: string,
  header: tar.Header,
  data: AsyncIterable<Buffer>,
  ctx: EntryContext,
): Promise<boolean> {
  const name = header.name;
  const type: string = header.type ?? 'file';
  if (type === 'pax-global-header' || type === 'pax-header') return false;
  const rel = entryPath(name);
  if (rel === '') return false; // the root itself: keep the root's own metadata
  const base = posix.basename(rel);
  const parentRel = posix.dirname(rel);

  if (ctx.whiteouts && base.startsWith(WHITEOUT_PREFIX)) {
    if (base === WHITEOUT_OPAQUE) {
      const dir = parentDir(root, parentRel, false);
      if (dir !== undefined) await removeOpaque(dir, ctx.unpacked);
    } else if (!base.startsWith(WHITEOUT_META_PREFIX)) {
      const victim = base.slice(WHITEOUT_PREFIX.length);
      if (victim === '' || victim === '.' || victim === '..') {
        throw new LayerError(LayerErrorCode.Unsafe, 'invalid whiteout name', { entry: name });
      }
      const dir = parentDir(root, parentRel, false);
      if (dir !== undefined) await rm(join(dir, victim), { recursive: true, force: true });
    }
    // Other `.wh..wh.` names are AUFS metadata: not part of the filesystem.
    return false;
  }

  if ((type === 'character-device' || type === 'block-device') && !ctx.allowDevices) {
    throw new LayerError(LayerErrorCode.Unsafe, `device files are not allowed (${type})`, {
      entry: name,
    });
  }
  let linkTarget: string | undefined;
  if (type === 'link') linkTarget = resolveHardlinkTarget(root, header.linkname ?? '', name);
  if (type === 'symlink' && !header.linkname) {
    throw new LayerError(LayerErrorCode.Invalid, 'symlink without a target', { entry: name });
  }

  const parent = parentDir(root, parentRel, true)!;
  const path = join(parent, base);
  const existing = lstatOrUndefinedSync(path);
  if (existing !== undefined && !(existing.isDirectory() && type === 'directory')) {
    if (linkTarget === path) return false; // a hardlink to itself: already there
    await rm(path, { recursive: true, force: true });
  }

  const mode = (header.mode ?? 0o644) & 0o7777;
  const mtime = header.mtime ?? new Date(0);
  let consumed = false;
  switch (type) {
    case 'directory':
      if (existing === undefined || !existing.isDirectory()) mkdirSync(path, { mode: 0o700 });
      ctx.dirs.push({ path, mtime });
      break;
    case 'file':
    case 'contiguous-file': {
      const fd = openSync(
        path,
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
        0o600,
      );
      try {
        await writeData(fd, data, header.size ?? 0);
      } finally {
        closeSync(fd);
      }
      consumed = true;
      break;
    }
    case 'symlink':
      symlinkSync(header.linkname, path);
      break;
    case 'link':
      linkSync(linkTarget!, path);
      break;
    case 'character-device':
    case 'block-device':
      mknod(
        path,
        (type === 'character-device' ? constants.S_IFCHR : constants.S_IFBLK) | 0o600,
        header.devmajor ?? 0,
        header.devminor ?? 0,
      );
      break;
    case 'fifo':
      mknod(path, constants.S_IFIFO | 0o600);
      break;
    default:
      throw new LayerError(LayerErrorCode.Invalid, `unsupported entry type ${String(type)}`, {
        entry: name,
      });
  }
  // The path and the directories above it (some created implicitly) belong to this tar: a
  // later opaque whiteout above them must keep them.
  for (let p = path; p.length > root.length && !ctx.unpacked.has(p); p = dirname(p))
    ctx.unpacked.add(p);

  const attrs = entryXattrs(header);
  if (attrs !== undefined) {
    ctx.xattrs.set(path, await xattrTarget(path, attrs));
  }

  if (type === 'link') return consumed; // shares the target's inode and metadata
  if (ctx.chown) {
    const o = ctx.owner ?? { uid: header.uid ?? 0, gid: header.gid ?? 0 };
    lchownSync(path, o.uid, o.gid);
  }
  // After chown, which clears setuid/setgid bits. Symlinks have no mode of their own on Linux.
  if (type !== 'symlink') chmodSync(path, mode);
  if (type !== 'directory') lutimesSync(path, mtime, mtime);
  return consumed;
}

/** Sets the collected attributes; see {@link applyLayer} for what is ignored. */
async function setXattrs(targets: XattrTarget[], mode: 'strict' | 'best-effort'): Promise<void> {
  if (targets.length === 0) return;
  const root = process.getuid?.() === 0;
  const { errors } = await writeXattrs(targets);
  if (mode === 'best-effort') return;
  const fatal = errors
    .filter((e) => e.code !== 'ENOTSUP' && e.code !== 'EOPNOTSUPP' && (root || e.code !== 'EPERM'))
    .map((e) => `${e.path}: ${e.name}: ${e.code}`);
  if (fatal.length > 0) {
    throw new LayerError(LayerErrorCode.Io, `setting extended attributes failed: ${fatal[0]}`, {
      details: { errors: fatal.slice(0, 10).join('\n') },
    });
  }
}

/** Resolves a hardlink's target inside root (parents followed, not the last component); it must exist and not be a directory. */
function resolveHardlinkTarget(root: string, linkname: string, entry: string): string {
  const rel = entryPath(linkname, entry);
  if (rel === '') {
    throw new LayerError(LayerErrorCode.Invalid, 'hardlink to the root', {
      entry,
      details: { linkname },
    });
  }
  const target = resolveInRootSync(root, rel, { followFinal: false });
  const st = lstatOrUndefinedSync(target);
  if (st === undefined) {
    throw new LayerError(LayerErrorCode.Invalid, 'hardlink target does not exist', {
      entry,
      details: { linkname },
    });
  }
  if (st.isDirectory()) {
    throw new LayerError(LayerErrorCode.Unsafe, 'hardlink to a directory', {
      entry,
      details: { linkname },
    });
  }
  return target;
}

/**
 * Removes everything under `dir` that this layer did not create (an opaque whiteout that comes
 * after some of the directory's new content). `unpacked` holds every path this layer wrote and
 * their parents.
 */
async function removeOpaque(dir: string, unpacked: Set<string>): Promise<void> {
  for (const name of await readdir(dir)) {
    const p = join(dir, name);
    if (!unpacked.has(p)) {
      await rm(p, { recursive: true, force: true });
      continue;
    }
    if (lstatOrUndefinedSync(p)?.isDirectory()) await removeOpaque(p, unpacked);
  }
}
