/**
 * Docker-compatible archive detection and unpacking for ADD: a regular file whose (possibly
 * gzip/bzip2/xz/zstd compressed) content starts with a valid tar header is an archive. gzip is
 * read with zlib; bzip2, xz and zstd through the system `bzip2`, `xz` and `zstd` commands (Node 20
 * has no decoder for them and no npm dependency is needed).
 *
 * Unpacking follows BuildKit's `applyRootArchive` / moby's `chrootarchive.Untar`: the destination
 * directory acts as the root (every entry is resolved with {@link resolveInRoot} inside it, as in
 * a chroot, so a symlink from the archive or already in place never leads a write out of it);
 * entry names and hardlink targets that climb out with `..` are rejected with
 * {@link FsErrorCode.Unsafe}; absolute names are taken relative to the destination. Symlinks are
 * created with their target text as given (it is only data until something follows it).
 * Extended attributes (PAX `SCHILY.xattr.*`) are set best-effort at the end, as moby's untar
 * does, on the entries the archive made (one `setfattr`, after chown).
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { link, lchown, lutimes, mkdir, open, rm, symlink, utimes, chmod } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { posix } from 'node:path';
import type { Readable } from 'node:stream';
import { PassThrough } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import * as zlib from 'node:zlib';
import * as tar from 'tar-stream';
import { FsError, FsErrorCode, errnoOf } from '@kiln/layers';
import { lstatOrUndefined, mkdirAllResolved } from './ops.js';
import type { Owner } from './ops.js';
import { resolveInRoot } from '@kiln/layers';
import { entryXattrs, keepPaxXattrs } from '@kiln/layers';
import { writeXattrs, xattrTarget } from '@kiln/layers';
import type { XattrTarget } from '@kiln/layers';

const execFileAsync = promisify(execFile);

export type ArchiveCompression = 'none' | 'gzip' | 'bzip2' | 'xz' | 'zstd';

/** Recognises a compressed stream by its magic bytes (moby's DetectCompression). */
export function detectCompression(head: Uint8Array): ArchiveCompression {
  const starts = (...b: number[]): boolean => b.every((v, i) => head[i] === v);
  if (starts(0x1f, 0x8b, 0x08)) return 'gzip';
  if (starts(0x42, 0x5a, 0x68)) return 'bzip2';
  if (starts(0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00)) return 'xz';
  if (starts(0x28, 0xb5, 0x2f, 0xfd)) return 'zstd';
  return 'none';
}

const TOOLS: Record<Exclude<ArchiveCompression, 'none' | 'gzip'>, string> = {
  bzip2: 'bzip2',
  xz: 'xz',
  zstd: 'zstd',
};

/** A decompressed view of a file; `close()` stops any helper process. */
interface Decompressed {
  stream: Readable;
  /** Resolves when a helper process exited cleanly; rejects when it failed. */
  done: Promise<void>;
  close(): void;
}

async function openDecompressed(
  hostPath: string,
  compression: ArchiveCompression,
): Promise<Decompressed> {
  const fh = await open(hostPath, constants.O_RDONLY | constants.O_NOFOLLOW);
  if (compression === 'none' || compression === 'gzip') {
    const raw = fh.createReadStream();
    const stream = compression === 'gzip' ? raw.pipe(zlib.createGunzip()) : raw;
    if (compression === 'gzip') raw.on('error', (e) => stream.destroy(e));
    return {
      stream,
      done: Promise.resolve(),
      close: () => {
        raw.destroy();
        stream.destroy();
      },
    };
  }
  const child = spawn(TOOLS[compression], ['-dc'], { stdio: ['pipe', 'pipe', 'pipe'] });
  const raw = fh.createReadStream();
  const feeding = pipeline(raw, child.stdin).catch(() => undefined); // EPIPE when closed early: reported by `done`
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  let closed = false;
  const done = new Promise<void>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => {
      void feeding.then(() => {
        if (code === 0 || closed) resolve();
        else
          reject(
            new FsError(FsErrorCode.BadArchive, `${TOOLS[compression]} failed: ${stderr.trim()}`),
          );
      });
    });
  });
  // Observed by the caller later; this keeps an early failure (a missing command) from being
  // reported as an unhandled rejection meanwhile.
  done.catch(() => undefined);
  return {
    stream: child.stdout,
    done,
    close: () => {
      closed = true;
      raw.destroy();
      child.kill();
    },
  };
}

/** Whether a 512-byte block is a tar header with a valid checksum (Go's tar reader would accept it). */
function isTarHeader(block: Buffer): boolean {
  if (block.length < 512 || block.every((b) => b === 0)) return false;
  const field = block.subarray(148, 156).toString('latin1').replace(/\0.*$/s, '').trim();
  if (!/^[0-7]+$/.test(field)) return false;
  const want = parseInt(field, 8);
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < 512; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : block[i]!;
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  return want === unsigned || want === signed;
}

/**
 * Returns the compression of `hostPath` when it is a regular file holding a tar archive (possibly
 * compressed), else undefined (BuildKit's isArchivePath). A symlink is never an archive.
 */
export async function detectArchive(hostPath: string): Promise<ArchiveCompression | undefined> {
  const st = await lstatOrUndefined(hostPath);
  if (st === undefined || !st.isFile()) return undefined;
  let fh: FileHandle | undefined;
  let head: Buffer;
  try {
    fh = await open(hostPath, constants.O_RDONLY | constants.O_NOFOLLOW);
    head = Buffer.alloc(8);
    const { bytesRead } = await fh.read(head, 0, 8, 0);
    head = head.subarray(0, bytesRead);
  } finally {
    await fh?.close();
  }
  const compression = detectCompression(head);
  const d = await openDecompressed(hostPath, compression);
  let block = Buffer.alloc(0);
  try {
    for await (const chunk of d.stream as AsyncIterable<Buffer>) {
      block = Buffer.concat([block, chunk]);
      if (block.length >= 512) break;
    }
  } catch (err) {
    // Corrupt compressed data: not an archive, copied as a plain file (as Docker does).
    if (!(err instanceof Error)) throw err;
    return undefined;
  } finally {
    d.close();
    await helperResult(d, compression);
  }
  return isTarHeader(block.subarray(0, 512)) ? compression : undefined;
}

/**
 * Waits for a decompression helper. A missing command is an error (a .tar.xz must not be copied
 * as a plain file because `xz` is not installed); a helper failing on bad data only means the
 * file is not an archive, which the caller sees from the data it got.
 */
async function helperResult(d: Decompressed, compression: ArchiveCompression): Promise<void> {
  try {
    await d.done;
  } catch (err) {
    if (errnoOf(err) === 'ENOENT' && compression !== 'none' && compression !== 'gzip') {
      throw new FsError(
        FsErrorCode.BadArchive,
        `cannot read ${compression} data: the ${TOOLS[compression]} command is not installed`,
        {
          cause: err,
        },
      );
    }
    if (!(err instanceof FsError)) throw err;
  }
}

export interface UnpackOptions {
  /** Owner of every unpacked entry; default: the archive's (when running as root). */
  owner?: Owner | undefined;
}

/**
 * Unpacks the archive at host path `archive` into host directory `destDir`, which must exist and be
 * a real directory. See the module comment for the safety rules; on failure `destDir` may hold part
 * of the archive (callers work on a scratch copy).
 */
export async function unpackArchive(
  archive: string,
  compression: ArchiveCompression,
  destDir: string,
  opts: UnpackOptions = {},
): Promise<void> {
  const d = await openDecompressed(archive, compression);
  const extract = tar.extract();
  keepPaxXattrs(extract);
  const feeding = pipeline(d.stream, new PassThrough(), extract);
  feeding.catch(() => undefined); // observed below
  const chown = opts.owner !== undefined || process.getuid?.() === 0;
  const dirs: { path: string; mtime: Date }[] = [];
  const xattrs = new Map<string, XattrTarget>();
  let current: string | undefined;
  try {
    for await (const entry of extract) {
      current = entry.header.name;
      const consumed = await unpackEntry(
        destDir,
        entry.header,
        entry as AsyncIterable<Buffer>,
        opts.owner,
        chown,
        dirs,
        xattrs,
      );
      if (!consumed) entry.resume();
    }
    await feeding;
    await d.done;
  } catch (err) {
    extract.destroy();
    d.close();
    await Promise.allSettled([feeding, d.done]);
    if (err instanceof FsError) throw err;
    throw new FsError(
      FsErrorCode.BadArchive,
      // Node's system errors name host paths after ", "; the entry is reported in details.
      `unpacking archive: ${(err instanceof Error ? err.message : String(err)).split(', ')[0]}`,
      {
        cause: err,
        ...(current !== undefined ? { details: { entry: current } } : {}),
      },
    );
  }
  // Best effort, as moby's untar (ENOTSUP, EPERM) and BuildKit's copy: failures are not fatal.
  await writeXattrs([...xattrs.values()]);
  for (const dir of dirs.reverse()) await utimes(dir.path, dir.mtime, dir.mtime);
}

/** Lexically cleans an entry name relative to the destination; throws when it climbs out. */
function entryRel(name: string, entry: string): string {
  const rel = posix.normalize(`./${name}`);
  if (rel === '..' || rel.startsWith('../')) {
    throw new FsError(FsErrorCode.Unsafe, 'archive entry is outside the destination', {
      path: entry,
    });
  }
  // `./` normalizes to `./`: the destination itself, like `.`.
  const clean = rel.replace(/\/+$/, '');
  return clean === '.' ? '' : clean;
}

async function unpackEntry(
  destDir: string,
  header: tar.Header,
  data: AsyncIterable<Buffer>,
  ownerOverride: Owner | undefined,
  chown: boolean,
  dirs: { path: string; mtime: Date }[],
  xattrs: Map<string, XattrTarget>,
): Promise<boolean> {
  const name = header.name;
  const type: string = header.type ?? 'file';
  if (type === 'pax-global-header' || type === 'pax-header') return false;
  const rel = entryRel(name, name);
  if (rel === '') return false; // the destination itself keeps its metadata
  const parentHost = await resolveInRoot(destDir, posix.dirname(`/${rel}`));
  await mkdirAllResolved(destDir, parentHost, { mode: 0o755 });
  const path = `${parentHost === '/' ? '' : parentHost}/${posix.basename(rel)}`;

  let linkTarget: string | undefined;
  if (type === 'link') {
    const lrel = entryRel(header.linkname ?? '', name);
    if (lrel === '')
      throw new FsError(FsErrorCode.Unsafe, 'hardlink to the destination directory', {
        path: name,
      });
    linkTarget = await resolveInRoot(destDir, lrel, { followFinal: false });
    const st = await lstatOrUndefined(linkTarget);
    if (st === undefined || st.isDirectory()) {
      throw new FsError(FsErrorCode.BadArchive, 'hardlink target missing or a directory', {
        path: name,
      });
    }
  }
  const existing = await lstatOrUndefined(path);
  if (existing !== undefined && !(existing.isDirectory() && type === 'directory')) {
    if (linkTarget === path) return false;
    await rm(path, { recursive: true, force: true });
  }
  const mode = (header.mode ?? 0o644) & 0o7777;
  const mtime = header.mtime ?? new Date(0);
  let consumed = false;
  switch (type) {
    case 'directory':
      if (existing === undefined || !existing.isDirectory()) await mkdir(path, { mode: 0o700 });
      dirs.push({ path, mtime });
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
      await symlink(header.linkname ?? '', path);
      break;
    case 'link':
      await link(linkTarget!, path);
      return false;
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
      throw new FsError(FsErrorCode.BadArchive, `unsupported archive entry type ${type}`, {
        path: name,
      });
  }
  if (chown) {
    const o = ownerOverride ?? { uid: header.uid ?? 0, gid: header.gid ?? 0 };
    await lchown(path, o.uid, o.gid);
  }
  if (type !== 'symlink') await chmod(path, mode);
  if (type !== 'directory') await lutimes(path, mtime, mtime);
  const attrs = entryXattrs(header);
  if (attrs !== undefined) xattrs.set(path, await xattrTarget(path, attrs));
  return consumed;
}
