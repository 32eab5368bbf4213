import { spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { Duplex, PassThrough, Readable, Transform } from 'node:stream';
import * as zlib from 'node:zlib';
import { LayerError, LayerErrorCode } from './errors.js';

export type Compression = 'gzip' | 'zstd' | 'none';

export const MediaTypes = {
  oci: {
    none: 'application/vnd.oci.image.layer.v1.tar',
    gzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
    zstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  },
  docker: {
    none: 'application/vnd.docker.image.rootfs.diff.tar',
    gzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
    zstd: 'application/vnd.oci.image.layer.v1.tar+zstd', // Docker has no zstd type; BuildKit uses OCI's.
  },
} as const;

/** A compression recognised by its magic bytes; `none` for anything else. */
export type ArchiveCompression = Compression | 'bzip2' | 'xz';

/** Recognises a compressed stream by its magic bytes (moby's DetectCompression). */
export function detectCompression(head: Uint8Array): ArchiveCompression {
  const starts = (...b: number[]): boolean => b.every((v, i) => head[i] === v);
  if (starts(0x1f, 0x8b, 0x08)) return 'gzip';
  if (starts(0x42, 0x5a, 0x68)) return 'bzip2';
  if (starts(0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00)) return 'xz';
  if (starts(0x28, 0xb5, 0x2f, 0xfd)) return 'zstd';
  return 'none';
}

interface ZstdZlib {
  createZstdCompress?: (opts?: object) => Transform;
  createZstdDecompress?: (opts?: object) => Transform;
}

function findOnPath(cmd: string): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(delimiter)) {
    const p = join(dir, cmd);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      continue;
    }
  }
  return undefined;
}

let zstdBinary: string | null | undefined;

/**
 * How zstd is provided here: node's zlib (Node >= 22.15), else the `zstd` command (Debian package
 * `zstd`) as a child process, else not at all.
 */
export function zstdSupport(): 'zlib' | 'cli' | undefined {
  if (typeof (zlib as ZstdZlib).createZstdCompress === 'function') return 'zlib';
  if (zstdBinary === undefined) zstdBinary = findOnPath('zstd') ?? null;
  return zstdBinary === null ? undefined : 'cli';
}

/** Runs the zstd CLI as a transform stream: stdin in, stdout out; a non-zero exit errors the stream. */
function zstdProcess(args: string[]): Duplex {
  // ZSTD_CLEVEL / ZSTD_NBTHREADS would change the output: the same layer must give the same bytes.
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith('ZSTD_')),
  );
  const child = spawn(zstdBinary ?? 'zstd', [...args, '-q', '-c', '--no-progress'], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env,
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    if (stderr.length < 4096) stderr += d;
  });
  const out = new PassThrough();
  child.stdout.pipe(out, { end: false });
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
  child.stdout.on('end', () => {
    void exited.then((code) => {
      if (code === 0) out.end();
      else
        out.destroy(
          new LayerError(LayerErrorCode.Io, `zstd exited with ${code}: ${stderr.trim()}`, {
            details: { exitCode: code ?? -1 },
          }),
        );
    });
  });
  child.on('error', (err) => out.destroy(err));
  const duplex = Duplex.from({ writable: child.stdin, readable: out });
  duplex.on('close', () => {
    if (child.exitCode === null) child.kill();
  });
  return duplex;
}

function unsupportedZstd(): LayerError {
  return new LayerError(
    LayerErrorCode.UnsupportedCompression,
    'zstd is not available: needs node >= 22.15 (zlib zstd) or the zstd command on PATH',
  );
}

/** A compressing transform for `c`; `level` as in gzip/zstd. */
export function compressor(c: Compression, level?: number): Duplex {
  switch (c) {
    case 'none':
      return new PassThrough();
    case 'gzip':
      return zlib.createGzip({ level: level ?? zlib.constants.Z_DEFAULT_COMPRESSION });
    case 'zstd': {
      const support = zstdSupport();
      if (support === 'zlib') {
        const z = zlib as ZstdZlib;
        return z.createZstdCompress!(
          level === undefined ? {} : { params: { [100 /* ZSTD_c_compressionLevel */]: level } },
        );
      }
      if (support === 'cli') return zstdProcess([`-${level ?? 3}`]);
      throw unsupportedZstd();
    }
  }
}

/**
 * Output chunk size of the decompressors: zlib's default (16 KiB) makes a 32 MiB layer 2,048
 * chunks, each a trip through the tar parser, the diffID hash and a file write.
 */
const DECOMPRESS_CHUNK = 256 * 1024;

/** A decompressing transform for `c`. */
export function decompressor(c: Compression): Duplex {
  switch (c) {
    case 'none':
      return new PassThrough();
    case 'gzip':
      return zlib.createGunzip({ chunkSize: DECOMPRESS_CHUNK });
    case 'zstd': {
      const support = zstdSupport();
      if (support === 'zlib')
        return (zlib as ZstdZlib).createZstdDecompress!({ chunkSize: DECOMPRESS_CHUNK });
      if (support === 'cli') return zstdProcess(['-d']);
      throw unsupportedZstd();
    }
  }
}

/**
 * Reads the first bytes of `source` to detect its compression, and returns the stream
 * decompressed (the peeked bytes are not lost).
 */
export async function autoDecompress(
  source: Readable,
): Promise<{ compression: Compression; tar: Readable }> {
  const head = await peek(source, 4);
  const compression = detectCompression(head.head);
  if (compression === 'bzip2' || compression === 'xz') {
    throw new LayerError(
      LayerErrorCode.UnsupportedCompression,
      `${compression} is not a layer compression (gzip, zstd or none)`,
    );
  }
  const dec = decompressor(compression);
  head.stream.on('error', (err) => dec.destroy(err));
  head.stream.pipe(dec);
  return { compression, tar: dec };
}

/** Collects at least `n` bytes (or all, if shorter) and returns them plus a stream that replays them. */
async function peek(source: Readable, n: number): Promise<{ head: Buffer; stream: Readable }> {
  const chunks: Buffer[] = [];
  let got = 0;
  const it = source[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  while (got < n) {
    const r = await it.next();
    if (r.done) break;
    chunks.push(r.value);
    got += r.value.length;
  }
  const head = Buffer.concat(chunks);
  async function* replay(): AsyncGenerator<Buffer> {
    if (head.length > 0) yield head;
    for (;;) {
      const r = await it.next();
      if (r.done) return;
      yield r.value;
    }
  }
  return { head, stream: Readable.from(replay()) };
}

/** Bytes gathered into one chunk by {@link coalescer}. */
export const COALESCE_BYTES = 64 * 1024;

/**
 * A transform that passes the bytes through in chunks of at least `bytes` (the last one may be
 * shorter). A tar writer emits a 512-byte header and a small body per file; zlib, a file or a
 * socket handles each chunk with one thread-pool job or syscall, so ten thousand small chunks
 * cost ten thousand round trips where a hundred large ones would do.
 */
export function coalescer(bytes = COALESCE_BYTES): Transform {
  let parts: Buffer[] = [];
  let size = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      parts.push(chunk);
      size += chunk.length;
      if (size >= bytes) {
        const out = parts.length === 1 ? parts[0]! : Buffer.concat(parts, size);
        parts = [];
        size = 0;
        cb(null, out);
      } else {
        cb();
      }
    },
    flush(cb) {
      cb(null, size > 0 ? Buffer.concat(parts, size) : undefined);
    },
  });
}
