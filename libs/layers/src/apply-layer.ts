import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import {
  chmod,
  lchown,
  link,
  lutimes,
  mkdir,
  open,
  readdir,
  realpath,
  rm,
  symlink,
  utimes,
} from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { KilnError } from '@kiln/protocol';
import { DigestingStream } from '@kiln/store';
import type { Digest } from '@kiln/store';
import * as tar from 'tar-stream';
import { entryXattrs, keepPaxXattrs } from './tar-xattrs.js';
import { writeXattrs, xattrTarget } from './xattr.js';
import type { XattrTarget } from './xattr.js';
import { autoDecompress } from './compression.js';
import type { Compression } from './compression.js';
import { LayerError, LayerErrorCode } from './errors.js';
import { entryComponents, lstatOrUndefined, resolveDirInRoot } from './safe-path.js';

const execFileAsync = promisify(execFile);

const WHITEOUT_PREFIX = '.wh.';
const WHITEOUT_META_PREFIX = '.wh..wh.';
const WHITEOUT_OPAQUE = '.wh..wh..opq';

export interface ApplyOptions {
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

interface PendingDir {
  path: string;
  mtime: Date;
}

/**
 * Applies an OCI layer (plain, gzip or zstd: detected) to `rootDir`, following the image-spec's
 * changeset rules: `.wh.<name>` deletes `<name>`, `.wh..wh..opq` empties its directory of
 * everything not in this layer, an existing path is replaced unless both are directories.
 *
 * Safety: every entry is resolved inside `rootDir` (see `resolveDirInRoot`); names with `..` or a
 * leading `/`, paths through a symlink that leaves the root, hardlinks whose target is outside or
 * missing, and devices (unless allowed) fail with a {@link LayerError} naming the entry; nothing
 * is ever written outside `rootDir`. A source that errors (a `BlobStore` read whose digest does
 * not verify) fails the apply with its error. On failure the root holds a partial layer: callers
 * apply into a fresh snapshot and discard it on error.
 * `rootDir` must not be modified by anyone else during the apply.
 *
 * Extended attributes (PAX `SCHILY.xattr.*`, parsed byte-exact) are set once every entry is in,
 * with one `setfattr --restore` (lsetxattr: a symlink's own attributes), on each entry that still
 * is the inode this layer created under a parent that still resolves to itself; after chown, which
 * would clear `security.capability`. `trusted.overlay.*` and `security.selinux` are never set; a
 * name the filesystem does not support is ignored (containerd ignores ENOTSUP); so is a refused
 * one (EPERM) when not running as root; any other failure is {@link LayerErrorCode.Io}. A
 * malformed name (empty, NUL, over 255 bytes) or a value over 64 KiB is
 * {@link LayerErrorCode.Invalid}.
 */
export async function applyLayer(
  source: Readable,
  rootDir: string,
  opts: ApplyOptions = {},
): Promise<ApplyResult> {
  const root = await realpath(rootDir);
  const allowDevices = opts.allowDevices ?? false;
  const chown = opts.chown ?? process.getuid?.() === 0;
  const { compression, tar: tarStream } = await autoDecompress(source);
  const hasher = new DigestingStream();
  const extract = tar.extract();
  keepPaxXattrs(extract);
  const feeding = pipeline(tarStream, hasher, extract);
  // Observed below; this keeps an early failure from being reported as unhandled meanwhile.
  feeding.catch(() => undefined);

  const unpacked = new Set<string>();
  const dirs: PendingDir[] = [];
  const xattrs = new Map<string, XattrTarget>();
  let entries = 0;
  let current: string | undefined;
  try {
    for await (const entry of extract) {
      const header = entry.header;
      current = header.name;
      entries++;
      const data = entry as AsyncIterable<Buffer>;
      const consumed = await applyEntry(root, header, data, {
        allowDevices,
        chown,
        unpacked,
        dirs,
        xattrs,
      });
      if (!consumed) entry.resume();
    }
    await feeding;
    current = undefined;
    await setXattrs([...xattrs.values()]);
    // Directory mtimes last: creating their children changed them.
    // A later entry may have replaced or removed a directory: only stamp what is still one.
    for (const d of dirs.reverse()) {
      if ((await lstatOrUndefined(d.path))?.isDirectory()) await utimes(d.path, d.mtime, d.mtime);
    }
  } catch (err) {
    extract.destroy();
    tarStream.destroy();
    source.destroy();
    await Promise.allSettled([feeding]);
    throw toLayerError(err, current);
  }
  return { compression, diffID: hasher.digest, size: hasher.size, entries };
}

function toLayerError(err: unknown, entry: string | undefined): KilnError {
  if (err instanceof KilnError) return err;
  const msg = err instanceof Error ? err.message : String(err);
  const code = (err as NodeJS.ErrnoException).code;
  // tar-stream reports malformed archives as plain errors without an errno code.
  const kind = code === undefined ? LayerErrorCode.Invalid : LayerErrorCode.Io;
  return new LayerError(kind, `applying layer: ${msg}`, { cause: err, entry });
}

interface EntryContext {
  allowDevices: boolean;
  chown: boolean;
  unpacked: Set<string>;
  dirs: PendingDir[];
  /** Extended attributes to set at the end, by host path. */
  xattrs: Map<string, XattrTarget>;
}

/** Applies one entry; returns whether it consumed the entry's data stream. */
async function applyEntry(
  root: string,
  header: tar.Header,
  data: AsyncIterable<Buffer>,
  ctx: EntryContext,
): Promise<boolean> {
  const name = header.name;
  const comps = entryComponents(name);
  const type: string = header.type ?? 'file';
  if (comps.length === 0) return false; // the root itself: keep the snapshot's own metadata
  const base = comps[comps.length - 1]!;
  const parentComps = comps.slice(0, -1);

  if (base.startsWith(WHITEOUT_PREFIX)) {
    if (base === WHITEOUT_OPAQUE) {
      const dir = await resolveDirInRoot(root, parentComps, name, { create: false });
      if (dir !== undefined) await removeOpaque(dir, ctx.unpacked);
    } else if (!base.startsWith(WHITEOUT_META_PREFIX)) {
      const victim = base.slice(WHITEOUT_PREFIX.length);
      if (victim === '' || victim === '.' || victim === '..') {
        throw new LayerError(LayerErrorCode.Unsafe, 'invalid whiteout name', { entry: name });
      }
      const dir = await resolveDirInRoot(root, parentComps, name, { create: false });
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
  if (type === 'link') linkTarget = await resolveHardlinkTarget(root, header.linkname ?? '', name);
  if (type === 'symlink' && !header.linkname) {
    throw new LayerError(LayerErrorCode.Invalid, 'symlink without a target', { entry: name });
  }

  const parent = await resolveDirInRoot(root, parentComps, name, { create: true });
  const path = join(parent!, base);
  const existing = await lstatOrUndefined(path);
  if (existing !== undefined && !(existing.isDirectory() && type === 'directory')) {
    if (linkTarget === path) return false; // a hardlink to itself: already there
    await rm(path, { recursive: true, force: true });
  }

  const mode = (header.mode ?? 0o644) & 0o7777;
  const mtime = header.mtime ?? new Date(0);
  let consumed = false;
  switch (type) {
    case 'directory':
      if (existing === undefined || !existing.isDirectory()) await mkdir(path, { mode: 0o700 });
      ctx.dirs.push({ path, mtime });
      break;
    case 'file':
    case 'contiguous-file': {
      const fh = await open(
        path,
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
        0o600,
      );
      try {
        for await (const chunk of data) await fh.write(chunk);
      } finally {
        await fh.close();
      }
      consumed = true;
      break;
    }
    case 'symlink':
      await symlink(header.linkname, path);
      break;
    case 'link':
      await link(linkTarget!, path);
      break;
    case 'character-device':
    case 'block-device':
      await execFileAsync('mknod', [
        path,
        type === 'character-device' ? 'c' : 'b',
        String(header.devmajor ?? 0),
        String(header.devminor ?? 0),
      ]);
      break;
    case 'fifo':
      await execFileAsync('mkfifo', [path]);
      break;
    default:
      throw new LayerError(LayerErrorCode.Invalid, `unsupported entry type ${String(type)}`, {
        entry: name,
      });
  }
  // The path and the directories above it (some created implicitly) belong to this layer: a
  // later opaque whiteout above them must keep them.
  for (let p = path; p.length > root.length && !ctx.unpacked.has(p); p = dirname(p))
    ctx.unpacked.add(p);

  const attrs = entryXattrs(header);
  if (attrs !== undefined) {
    ctx.xattrs.set(path, await xattrTarget(path, attrs));
  }

  if (type === 'link') return consumed; // shares the target's inode and metadata
  if (ctx.chown) await lchown(path, header.uid ?? 0, header.gid ?? 0);
  // After chown, which clears setuid/setgid bits. Symlinks have no mode of their own on Linux.
  if (type !== 'symlink') await chmod(path, mode);
  if (type !== 'directory') await lutimes(path, mtime, mtime);
  return consumed;
}

/** Sets the collected attributes; see {@link applyLayer} for what is ignored. */
async function setXattrs(targets: XattrTarget[]): Promise<void> {
  if (targets.length === 0) return;
  const root = process.getuid?.() === 0;
  const { errors } = await writeXattrs(targets);
  const fatal = errors.filter(
    (e) =>
      !e.endsWith(': Operation not supported') &&
      !(!root && e.endsWith(': Operation not permitted')),
  );
  if (fatal.length > 0) {
    throw new LayerError(LayerErrorCode.Io, `setting extended attributes failed: ${fatal[0]}`, {
      details: { errors: fatal.slice(0, 10).join('\n') },
    });
  }
}

/** Resolves a hardlink's target inside root; it must exist and not be a directory. */
async function resolveHardlinkTarget(
  root: string,
  linkname: string,
  entry: string,
): Promise<string> {
  const comps = entryComponents(linkname, entry);
  if (comps.length === 0) {
    throw new LayerError(LayerErrorCode.Invalid, 'hardlink to the root', {
      entry,
      details: { linkname },
    });
  }
  const dir = await resolveDirInRoot(root, comps.slice(0, -1), entry, { create: false });
  const target = dir === undefined ? undefined : join(dir, comps[comps.length - 1]!);
  const st = target === undefined ? undefined : await lstatOrUndefined(target);
  if (target === undefined || st === undefined) {
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
    const st = await lstatOrUndefined(p);
    if (st?.isDirectory()) await removeOpaque(p, unpacked);
  }
}
