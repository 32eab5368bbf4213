/**
 * The `http(s)://` source (BuildKit's source/http): one file downloaded into an otherwise empty
 * filesystem, named by `http.filename` (default: the last path component of the URL, or `index`),
 * with mode `http.perm` (default 0600), owner `http.uid`/`http.gid`, and the server's
 * Last-Modified time. With `http.checksum` the content must have that digest, and the checksum is
 * the cache pin (nothing is downloaded to check the cache); without it the content is downloaded
 * to learn its digest, and that download is reused by the build.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { chmod, chown, copyFile, mkdir, rename, rm, utimes } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import { KilnError } from '@kiln/protocol';
import type { pb } from '@kiln/protocol';

export class HttpSourceError extends KilnError {
  constructor(
    code: 'HTTP_FAILED' | 'HTTP_CHECKSUM_MISMATCH' | 'HTTP_INVALID',
    message: string,
    url: string,
    opts: { retryable?: boolean; cause?: unknown } = {},
  ) {
    super(code, message, { ...opts, details: { url } });
  }
}

export interface HttpSpec {
  url: string;
  checksum?: string;
  filename: string;
  perm: number;
  uid: number;
  gid: number;
}

export function httpSpec(op: pb.ISourceOp): HttpSpec {
  const url = op.identifier ?? '';
  const a = op.attrs ?? {};
  let filename = a['http.filename'] ?? '';
  if (!filename) {
    let base = '';
    try {
      base = posix.basename(new URL(url).pathname);
    } catch (cause) {
      throw new HttpSourceError('HTTP_INVALID', `invalid URL ${url}`, url, { cause });
    }
    filename = base && base !== '/' ? base : 'index';
  }
  if (filename.includes('/') || filename === '.' || filename === '..') {
    throw new HttpSourceError(
      'HTTP_INVALID',
      `invalid http.filename ${JSON.stringify(filename)}`,
      url,
    );
  }
  const perm = a['http.perm'] ? parseInt(a['http.perm'], 8) : 0o600;
  if (!Number.isInteger(perm) || perm < 0 || perm > 0o7777)
    throw new HttpSourceError('HTTP_INVALID', `invalid http.perm ${a['http.perm']}`, url);
  const spec: HttpSpec = {
    url,
    filename,
    perm,
    uid: Number(a['http.uid'] ?? 0),
    gid: Number(a['http.gid'] ?? 0),
  };
  if (a['http.checksum']) spec.checksum = a['http.checksum'];
  return spec;
}

interface Download {
  file: string;
  digest: string;
  lastModified?: Date;
}

/**
 * Downloads files into a directory, named by content digest. Concurrent downloads of one URL are
 * shared; a later call downloads again (the server's content may have changed).
 */
export class HttpDownloader {
  private readonly inflight = new Map<string, Promise<Download>>();

  constructor(private readonly dir: string) {}

  download(spec: HttpSpec, signal?: AbortSignal): Promise<Download> {
    const k = `${spec.url} ${spec.checksum ?? ''}`;
    let p = this.inflight.get(k);
    if (!p) {
      p = this.fetch(spec, signal);
      p.finally(() => this.inflight.delete(k)).catch(() => undefined);
      this.inflight.set(k, p);
    }
    return p;
  }

  private async fetch(spec: HttpSpec, signal?: AbortSignal): Promise<Download> {
    await mkdir(this.dir, { recursive: true });
    let res: Response;
    try {
      res = await fetch(spec.url, signal ? { signal, redirect: 'follow' } : { redirect: 'follow' });
    } catch (cause) {
      throw new HttpSourceError(
        'HTTP_FAILED',
        `GET ${spec.url}: ${(cause as Error).message}`,
        spec.url,
        { retryable: true, cause },
      );
    }
    if (!res.ok || !res.body) {
      throw new HttpSourceError(
        'HTTP_FAILED',
        `GET ${spec.url}: ${res.status} ${res.statusText}`,
        spec.url,
        {
          retryable: res.status >= 500 || res.status === 429,
        },
      );
    }
    const tmp = join(this.dir, `dl-${randomUUID()}`);
    const hash = createHash('sha256');
    const tap = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        hash.update(chunk);
        cb(null, chunk);
      },
    });
    try {
      await pipeline(Readable.fromWeb(res.body), tap, createWriteStream(tmp));
    } catch (cause) {
      await rm(tmp, { force: true });
      throw new HttpSourceError(
        'HTTP_FAILED',
        `GET ${spec.url}: ${(cause as Error).message}`,
        spec.url,
        { retryable: true, cause },
      );
    }
    const digest = `sha256:${hash.digest('hex')}`;
    if (spec.checksum && spec.checksum !== digest) {
      await rm(tmp, { force: true });
      throw new HttpSourceError(
        'HTTP_CHECKSUM_MISMATCH',
        `${spec.url}: content has digest ${digest}, expected ${spec.checksum}`,
        spec.url,
      );
    }
    const file = join(this.dir, digest.slice('sha256:'.length));
    await rename(tmp, file);
    const lm = res.headers.get('last-modified');
    const d = lm ? new Date(lm) : undefined;
    return d && !Number.isNaN(d.getTime()) ? { file, digest, lastModified: d } : { file, digest };
  }
}

/** Writes the downloaded file into `dest` (an empty snapshot dir). */
export async function writeHttpFile(
  spec: HttpSpec,
  dl: HttpDownloader,
  dest: string,
  signal?: AbortSignal,
): Promise<void> {
  const d = await dl.download(spec, signal);
  const target = join(dest, spec.filename);
  await copyFile(d.file, target);
  await chmod(target, spec.perm);
  if (process.getuid?.() === 0) await chown(target, spec.uid, spec.gid);
  if (d.lastModified) await utimes(target, d.lastModified, d.lastModified);
}
