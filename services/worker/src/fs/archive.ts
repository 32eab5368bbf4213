/**
 * Docker-compatible archive detection and unpacking for ADD: a regular file whose (possibly
 * gzip/bzip2/xz/zstd compressed) content starts with a valid tar header is an archive. gzip is
 * read with zlib; bzip2, xz and zstd through the system `bzip2`, `xz` and `zstd` commands (Node 20
 * has no decoder for them and no npm dependency is needed).
 *
 * Unpacking is `@kiln/layers`' one tar applier (`applyTar`, containerd's rules) with the
 * destination directory as its root, as BuildKit's `applyRootArchive` / moby's
 * `chrootarchive.Untar`: no whiteout processing, devices created, owners from the archive or the
 * copy's `--chown`, extended attributes best-effort. Its errors become {@link FsError}s:
 * `FS_UNSAFE_PATH` for an entry that would leave the destination, `FS_BAD_ARCHIVE` otherwise.
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as zlib from 'node:zlib';
import {
  FsError,
  FsErrorCode,
  LayerError,
  LayerErrorCode,
  applyTar,
  detectCompression,
  errnoOf,
  lstatOrUndefined,
} from '@kiln/layers';
import type { ArchiveCompression, TarLimits } from '@kiln/layers';
import type { Owner } from './ops.js';

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
  /** Bounds on the unpacked bytes and entries (a decompression bomb stops there). */
  limits?: TarLimits | undefined;
}

/**
 * Unpacks the archive at host path `archive` into host directory `destDir`, which must exist and be
 * a real directory. See the module comment for the rules; on failure `destDir` may hold part of
 * the archive (callers work on a scratch copy).
 */
export async function unpackArchive(
  archive: string,
  compression: ArchiveCompression,
  destDir: string,
  opts: UnpackOptions = {},
): Promise<void> {
  const d = await openDecompressed(archive, compression);
  try {
    await applyTar(d.stream, destDir, {
      whiteouts: false,
      allowDevices: true,
      owner: opts.owner,
      xattrs: 'best-effort',
      ...(opts.limits ? { limits: opts.limits } : {}),
    });
    await d.done;
  } catch (err) {
    d.close();
    await Promise.allSettled([d.done]);
    if (err instanceof FsError) throw err;
    // Typed as it is (the limit and the entry in its details): the FileOp names the step.
    if (err instanceof LayerError && err.code === LayerErrorCode.LimitExceeded) throw err;
    if (err instanceof LayerError) {
      const code = err.code === LayerErrorCode.Unsafe ? FsErrorCode.Unsafe : FsErrorCode.BadArchive;
      throw new FsError(code, `unpacking archive: ${err.message}`, {
        cause: err,
        ...(err.entry !== undefined ? { details: { entry: err.entry } } : {}),
      });
    }
    throw new FsError(
      FsErrorCode.BadArchive,
      `unpacking archive: ${(err instanceof Error ? err.message : String(err)).split(', ')[0]}`,
      { cause: err },
    );
  }
}
