import { createHash, randomUUID } from 'node:crypto';
import { pipeline } from 'node:stream';
import type { Readable } from 'node:stream';
import type { Client } from 'minio';
import type * as MinioModule from 'minio';

type Minio = typeof MinioModule;
let minio: Promise<Minio> | undefined;

/** The minio client library loads on first use: it is large, and most processes never touch S3. */
function loadMinio(): Promise<Minio> {
  minio ??= import('minio');
  return minio;
}
import type { BlobInfo, BlobSource, BlobStore, GetOptions, PutOptions } from './blob-store.js';
import { DigestingStream, digestHex, parseDigest } from './digest.js';
import type { Digest } from './digest.js';
import {
  BlobNotFoundError,
  DigestMismatchError,
  InvalidBlobError,
  StoreConfigError,
  StoreUnavailableError,
} from './errors.js';
import { rangeOf } from './fs-blob-store.js';
import { discardSource, emptyStream, fixedParts, sourceChunks } from './source.js';

const HEX_RE = /^[0-9a-f]{64}$/;
const MIB = 1024 * 1024;
/** S3's limit for a single CopyObject; larger blobs are copied with multipart part-copies. */
const MAX_SINGLE_COPY = 5 * 1024 * MIB;
/** User metadata a touch sets (see `touch`). */
const TOUCHED = 'kiln-touched';
/** See {@link S3BlobStoreOptions.touchRefreshMs}. */
export const DEFAULT_TOUCH_REFRESH_MS = 60 * 60 * 1000;

/** What one HEAD of a blob's object tells. */
interface ObjectStat {
  size: number;
  etag: string;
  /** The later of its LastModified and its `kiln-touched` time, in ms. */
  lastUsed: number;
  contentType: string | undefined;
}

export interface S3BlobStoreOptions {
  /** `http(s)://host[:port]` of the S3 API. */
  endpoint: string;
  accessKey: string;
  secretKey: string;
  bucket: string;
  /** Key prefix, e.g. `kiln/`; blobs live at `<prefix>blobs/sha256/<hex>`. Default ''. */
  prefix?: string;
  region?: string;
  /** Multipart part size in bytes (S3 minimum 5 MiB); blobs up to one part use a single PUT. Default 16 MiB. */
  partSize?: number;
  /** Parts uploaded in parallel per put. Default 4. */
  concurrency?: number;
  /**
   * A touch (and a put of content already stored) copies the object onto itself only when it
   * was last used longer ago than this, in ms: S3 bills every copy, and a blob reused by every
   * build would otherwise be copied on each. `lastUsed` is then up to this stale, so a store
   * collector's keep-duration must be well above it. Default 1 hour (BuildKit's s3 cache
   * `touch_refresh` is 24 h); 0 touches every time.
   */
  touchRefreshMs?: number;
  /**
   * Told about a cleanup step that failed after a put had already failed (an abort of a multipart
   * upload, which some servers such as s3rver do not implement, or removal of a temp object). The
   * blob is invisible either way; this is for telemetry. Default: ignored.
   */
  onCleanupError?: (err: unknown, key: string) => void;
  /**
   * How long a request rides out a store that does not answer (connection refused or timed out,
   * unreachable, `503 SlowDown`, `500 InternalError`): it is sent again with backoff (100 ms
   * doubling to 2 s) until this long after its first try, then fails with the last error. Every
   * request the store sends is idempotent (blobs are content-addressed), so resending is safe.
   * 0 fails at once. Default 30 s.
   */
  outageMs?: number;
  /** Told before each resend of a request during an outage (telemetry, tests). */
  onRetry?: (e: { code: string; attempt: number; delayMs: number }) => void;
}

interface S3LikeError {
  code?: string;
  message?: string;
}

const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
  'ENOTFOUND',
  'SlowDown',
  'ServiceUnavailable',
  'InternalError',
  'RequestTimeout',
]);

function errCode(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const code = (err as S3LikeError).code;
  return typeof code === 'string' ? code : undefined;
}

function isNotFound(err: unknown): boolean {
  const code = errCode(err);
  return code === 'NotFound' || code === 'NoSuchKey';
}

function toStoreError(what: string, err: unknown): Error {
  if (
    err instanceof InvalidBlobError ||
    err instanceof DigestMismatchError ||
    err instanceof BlobNotFoundError
  ) {
    return err;
  }
  const code = errCode(err);
  const msg = err instanceof Error ? err.message : String(err);
  return new StoreUnavailableError(`s3 store: ${what}: ${msg}`, {
    cause: err,
    retryable: code === undefined || NETWORK_CODES.has(code),
    details: { s3code: code },
  });
}

/**
 * Errors that mean the request never reached the server or its answer was lost on a pooled
 * keep-alive socket the server had just closed: safe to resend for idempotent requests.
 */
const RESEND_CODES = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED']);
/** Resends at once on a dropped connection, before backing off. */
const MAX_IMMEDIATE = 3;
/**
 * Errors of a store that is away for a while (restarting, overloaded, a network blip): resent
 * with backoff within `outageMs`. Not DNS failures (`ENOTFOUND`): a wrong endpoint fails at once.
 */
const OUTAGE_CODES = new Set([
  ...RESEND_CODES,
  'ECONNREFUSED',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
  'SlowDown',
  'ServiceUnavailable',
  'InternalError',
  'RequestTimeout',
]);

async function clientFor(opts: S3BlobStoreOptions): Promise<Client> {
  const url = new URL(opts.endpoint);
  const useSSL = url.protocol === 'https:';
  const { Client } = await loadMinio();
  return new Client({
    endPoint: url.hostname,
    port: url.port === '' ? (useSSL ? 443 : 80) : Number(url.port),
    useSSL,
    accessKey: opts.accessKey,
    secretKey: opts.secretKey,
    region: opts.region ?? 'us-east-1',
    pathStyle: true,
  });
}

/**
 * A {@link BlobStore} on any S3-compatible service, through the `minio` client.
 *
 * Atomicity: a blob that fits in one part is hashed in memory and written with one PUT. A larger
 * blob is a multipart upload whose parts go up in parallel while the whole is hashed; the upload
 * is completed only after the digest checks out, and an object appears on S3 only on completion.
 * When the digest is known in advance the upload targets the final key; otherwise it targets a
 * temp key (`<prefix>uploads/<uuid>`) that is copied to the final key and removed. A failed put
 * aborts its multipart upload (best effort) and never completes it, so nothing becomes visible.
 */
export class S3BlobStore implements BlobStore {
  readonly bucket: string;
  readonly prefix: string;
  private readonly clientP: Promise<Client>;
  private readonly partSize: number;
  private readonly concurrency: number;
  private readonly onCleanupError: (err: unknown, key: string) => void;
  readonly #outageMs: number;
  readonly #onRetry: NonNullable<S3BlobStoreOptions['onRetry']>;
  readonly touchRefreshMs: number;

  constructor(opts: S3BlobStoreOptions) {
    this.bucket = opts.bucket;
    this.prefix = opts.prefix ?? '';
    this.clientP = clientFor(opts);
    // Surfaced by the first call that needs the client.
    this.clientP.catch(() => undefined);
    this.partSize = opts.partSize ?? 16 * MIB;
    this.concurrency = Math.max(1, opts.concurrency ?? 4);
    this.onCleanupError = opts.onCleanupError ?? (() => undefined);
    this.#outageMs = Math.max(0, opts.outageMs ?? 30_000);
    this.#onRetry = opts.onRetry ?? (() => undefined);
    this.touchRefreshMs = opts.touchRefreshMs ?? DEFAULT_TOUCH_REFRESH_MS;
    if (!Number.isSafeInteger(this.touchRefreshMs) || this.touchRefreshMs < 0)
      throw new StoreConfigError(
        `the S3 store's touch refresh must be a non-negative integer of ms (got ${String(opts.touchRefreshMs)})`,
      );
  }

  /**
   * Runs an idempotent S3 request: resent at once when the connection dropped under it, and with
   * backoff while the store is away (see `outageMs`).
   */
  async #resend<T>(fn: () => Promise<T>): Promise<T> {
    const deadline = Date.now() + this.#outageMs;
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn();
      } catch (err) {
        const code = errCode(err);
        if (code === undefined || !OUTAGE_CODES.has(code)) throw err;
        if (RESEND_CODES.has(code) && attempt < MAX_IMMEDIATE) continue;
        const delayMs = Math.min(2_000, 100 * 2 ** Math.min(attempt - 1, 5));
        if (Date.now() + delayMs > deadline) throw err;
        this.#onRetry({ code, attempt, delayMs });
        await new Promise((r) => setTimeout(r, delayMs));
      }
    }
  }

  /** The underlying minio client (loaded on first use). */
  client(): Promise<Client> {
    return this.clientP;
  }

  /** Object key of a blob. */
  keyOf(digest: Digest): string {
    return `${this.prefix}blobs/sha256/${digestHex(parseDigest(digest))}`;
  }

  /** Creates the bucket if it does not exist. */
  async ensureBucket(): Promise<void> {
    try {
      if (!(await this.#resend(async () => (await this.clientP).bucketExists(this.bucket))))
        await (await this.clientP).makeBucket(this.bucket);
    } catch (err) {
      throw toStoreError('ensure bucket', err);
    }
  }

  async put(
    expected: Digest | undefined,
    source: BlobSource,
    opts: PutOptions = {},
  ): Promise<BlobInfo> {
    if (expected !== undefined) {
      parseDigest(expected);
      // With a known size, a stored blob of that size answers the put: its bytes were verified
      // when stored. Without one, a HEAD cannot tell a complete object from one still being
      // written on servers whose PUT is not atomic (s3rver), so the content is sent again.
      // One HEAD answers both the dedup and whether the touch is due.
      const st = opts.size !== undefined ? await this.#statObject(expected) : undefined;
      if (st !== undefined && st.size === opts.size) {
        discardSource(source);
        await this.#touchStated(expected, st);
        return { digest: expected, size: opts.size };
      }
    }
    const meta: Record<string, string> = opts.mediaType ? { 'Content-Type': opts.mediaType } : {};
    const parts = fixedParts(sourceChunks(source), this.partSize)[Symbol.asyncIterator]();
    const first = await parts.next();
    const firstPart = first.done ? Buffer.alloc(0) : first.value;
    const second =
      firstPart.length === this.partSize
        ? await parts.next()
        : { done: true as const, value: undefined };

    if (second.done) {
      // Fits in one part: verify in memory, then one PUT makes it visible whole.
      const digest: Digest = `sha256:${createHash('sha256').update(firstPart).digest('hex')}`;
      this.check(expected, digest, opts.size, firstPart.length);
      try {
        await this.#resend(async () =>
          (await this.clientP).putObject(
            this.bucket,
            this.keyOf(digest),
            firstPart,
            firstPart.length,
            meta,
          ),
        );
      } catch (err) {
        throw toStoreError('put', err);
      }
      return { digest, size: firstPart.length };
    }
    return this.putMultipart(expected, firstPart, second.value, parts, opts, meta);
  }

  private check(
    expected: Digest | undefined,
    digest: Digest,
    expectedSize: number | undefined,
    size: number,
  ): void {
    if (expected !== undefined && digest !== expected) {
      throw new DigestMismatchError(expected, digest, { details: { size } });
    }
    if (expectedSize !== undefined && size !== expectedSize) {
      throw new InvalidBlobError(`size mismatch: expected ${expectedSize} bytes, got ${size}`, {
        details: { digest, expected: expectedSize, actual: size },
      });
    }
  }

  private async putMultipart(
    expected: Digest | undefined,
    part1: Buffer,
    part2: Buffer,
    rest: AsyncIterator<Buffer>,
    opts: PutOptions,
    meta: Record<string, string>,
  ): Promise<BlobInfo> {
    const key =
      expected !== undefined ? this.keyOf(expected) : `${this.prefix}uploads/${randomUUID()}`;
    let uploadId: string;
    try {
      uploadId = await this.#resend(async () =>
        (await this.clientP).initiateNewMultipartUpload(this.bucket, key, meta),
      );
    } catch (err) {
      throw toStoreError('initiate multipart upload', err);
    }
    const hash = createHash('sha256');
    let size = 0;
    const etags: { part: number; etag: string }[] = [];
    const inflight = new Set<Promise<void>>();
    let failure: Error | undefined;
    const upload = (partNumber: number, payload: Buffer): void => {
      const p = this.#resend(async () =>
        (await this.clientP).uploadPart(
          { bucketName: this.bucket, objectName: key, uploadID: uploadId, partNumber, headers: {} },
          payload,
        ),
      )
        .then(
          (res) => {
            etags.push({ part: partNumber, etag: res.etag });
          },
          (err: unknown) => {
            failure ??= toStoreError(`upload part ${partNumber}`, err);
          },
        )
        .finally(() => inflight.delete(p));
      inflight.add(p);
    };
    try {
      let partNumber = 0;
      let next: IteratorResult<Buffer> = { done: false, value: part1 };
      const queued = [part2];
      while (!next.done) {
        const payload = next.value;
        hash.update(payload);
        size += payload.length;
        upload(++partNumber, payload);
        while (inflight.size >= this.concurrency) await Promise.race(inflight);
        if (failure !== undefined) throw failure;
        const q = queued.shift();
        next = q !== undefined ? { done: false, value: q } : await rest.next();
      }
      await Promise.all(inflight);
      if (failure !== undefined) throw failure;
      const digest: Digest = `sha256:${hash.digest('hex')}`;
      this.check(expected, digest, opts.size, size);
      etags.sort((a, b) => a.part - b.part);
      try {
        await this.#resend(async () =>
          (await this.clientP).completeMultipartUpload(this.bucket, key, uploadId, etags),
        );
      } catch (err) {
        throw toStoreError('complete multipart upload', err);
      }
      if (expected === undefined) await this.promote(key, digest, size);
      return { digest, size };
    } catch (err) {
      await Promise.allSettled(inflight);
      await (
        await this.clientP
      )
        .abortMultipartUpload(this.bucket, key, uploadId)
        .catch((abortErr: unknown) => {
          this.onCleanupError(abortErr, key);
        });
      throw err;
    }
  }

  /** Copies a completed temp object to its blob key, then removes the temp object. */
  private async promote(tmpKey: string, digest: Digest, size: number): Promise<void> {
    const finalKey = this.keyOf(digest);
    try {
      const { CopyDestinationOptions, CopySourceOptions } = await loadMinio();
      const src = new CopySourceOptions({ Bucket: this.bucket, Object: tmpKey });
      const dst = new CopyDestinationOptions({ Bucket: this.bucket, Object: finalKey });
      if (size <= MAX_SINGLE_COPY)
        await this.#resend(async () => (await this.clientP).copyObject(src, dst));
      else await (await this.clientP).composeObject(dst, [src]);
    } catch (err) {
      await this.removeQuietly(tmpKey);
      throw toStoreError('copy to blob key', err);
    }
    await this.removeQuietly(tmpKey);
  }

  private async removeQuietly(key: string): Promise<void> {
    await this.#resend(async () => (await this.clientP).removeObject(this.bucket, key)).catch(
      (err: unknown) => {
        this.onCleanupError(err, key);
      },
    );
  }

  async get(digest: Digest, opts: GetOptions = {}): Promise<Readable> {
    const key = this.keyOf(digest);
    const info = await this.#statObject(digest);
    if (info === undefined) throw new BlobNotFoundError(digest);
    const { start, end, full } = rangeOf(digest, info.size, opts);
    let body: Readable;
    try {
      if (full)
        body = await this.#resend(async () => (await this.clientP).getObject(this.bucket, key));
      else if (end < start) return emptyStream();
      else
        body = await this.#resend(async () =>
          (await this.clientP).getPartialObject(this.bucket, key, start, end - start + 1),
        );
    } catch (err) {
      if (isNotFound(err)) throw new BlobNotFoundError(digest, { cause: err });
      throw toStoreError('get', err);
    }
    if (!full) return body;
    const verifier = new DigestingStream(digest, info.size, () =>
      this.#removeCorrupt(digest, info.etag),
    );
    return pipeline(body, verifier, () => undefined);
  }

  /**
   * Removes the object of `digest` that a verified read found corrupt, so that the next put of
   * the right content stores it again (the put's fast path trusts a stored blob of the right
   * size). Only while it is still the object that was read (same ETag): one a concurrent put
   * wrote meanwhile stays.
   */
  async #removeCorrupt(digest: Digest, etag: string): Promise<boolean> {
    const now = await this.#statObject(digest);
    if (now === undefined || now.etag !== etag) return false;
    try {
      await this.#resend(async () =>
        (await this.clientP).removeObject(this.bucket, this.keyOf(digest)),
      );
    } catch (err) {
      throw toStoreError('remove corrupt blob', err);
    }
    return true;
  }

  async #statObject(digest: Digest): Promise<ObjectStat | undefined> {
    let st;
    try {
      st = await this.#resend(async () =>
        (await this.clientP).statObject(this.bucket, this.keyOf(digest)),
      );
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw toStoreError('stat', err);
    }
    const meta = st.metaData as Record<string, string> | undefined;
    const touched = Date.parse(meta?.[TOUCHED] ?? '');
    const stored = st.lastModified.getTime();
    return {
      size: st.size,
      etag: st.etag,
      lastUsed: Number.isFinite(touched) ? Math.max(touched, stored) : stored,
      contentType: meta?.['content-type'],
    };
  }

  async stat(digest: Digest): Promise<{ size: number } | undefined> {
    const st = await this.#statObject(digest);
    return st === undefined ? undefined : { size: st.size };
  }

  async has(digest: Digest): Promise<boolean> {
    return (await this.stat(digest)) !== undefined;
  }

  /**
   * S3 has no "touch": the object is copied onto itself with its metadata replaced (one
   * server-side request, no data through the client), which sets its LastModified on S3 and MinIO
   * and records the time as `x-amz-meta-kiln-touched` (s3rver keeps LastModified as it was, so
   * {@link lastUsed} reads both). Skipped (true, nothing written) when the blob was used within
   * `touchRefreshMs`. Objects over the size of one copy (5 GiB) are left as they are.
   */
  async touch(digest: Digest): Promise<boolean> {
    const st = await this.#statObject(digest);
    if (st === undefined) return false;
    return this.#touchStated(digest, st);
  }

  /** The touch of a blob just stated as `st`. */
  async #touchStated(digest: Digest, st: ObjectStat): Promise<boolean> {
    if (Date.now() - st.lastUsed < this.touchRefreshMs) return true;
    if (st.size > MAX_SINGLE_COPY) return true;
    const key = this.keyOf(digest);
    try {
      const { CopyDestinationOptions, CopySourceOptions } = await loadMinio();
      const src = new CopySourceOptions({ Bucket: this.bucket, Object: key });
      const dst = new CopyDestinationOptions({
        Bucket: this.bucket,
        Object: key,
        MetadataDirective: 'REPLACE',
        UserMetadata: { [TOUCHED]: new Date().toISOString() },
        ...(st.contentType ? { Headers: { 'Content-Type': st.contentType } } : {}),
      });
      await this.#resend(async () => (await this.clientP).copyObject(src, dst));
    } catch (err) {
      if (isNotFound(err)) return false;
      throw toStoreError('touch', err);
    }
    return true;
  }

  async lastUsed(digest: Digest): Promise<Date | undefined> {
    const st = await this.#statObject(digest);
    return st === undefined ? undefined : new Date(st.lastUsed);
  }

  async delete(digest: Digest): Promise<boolean> {
    const existed = await this.has(digest);
    if (!existed) return false;
    try {
      await this.#resend(async () =>
        (await this.clientP).removeObject(this.bucket, this.keyOf(digest)),
      );
    } catch (err) {
      throw toStoreError('delete', err);
    }
    return true;
  }

  /**
   * Removes temp objects (`<prefix>uploads/`) older than `olderThanMs`: left by a process that died
   * between completing an upload and copying it to its blob key. Incomplete multipart uploads are
   * not objects; a bucket lifecycle rule (AbortIncompleteMultipartUpload) reclaims those.
   */
  async removeStaleUploads(olderThanMs = 24 * 3600_000): Promise<number> {
    const cutoff = Date.now() - olderThanMs;
    const stale: string[] = [];
    try {
      for await (const item of (await this.clientP).listObjectsV2(
        this.bucket,
        `${this.prefix}uploads/`,
        true,
      ) as AsyncIterable<{
        name?: string;
        lastModified?: Date;
      }>) {
        if (
          item.name !== undefined &&
          item.lastModified !== undefined &&
          item.lastModified.getTime() <= cutoff
        ) {
          stale.push(item.name);
        }
      }
      for (const key of stale)
        await this.#resend(async () => (await this.clientP).removeObject(this.bucket, key));
    } catch (err) {
      throw toStoreError('remove stale uploads', err);
    }
    return stale.length;
  }

  async *list(): AsyncIterable<BlobInfo> {
    const dir = `${this.prefix}blobs/sha256/`;
    try {
      for await (const item of (await this.clientP).listObjectsV2(
        this.bucket,
        dir,
        true,
      ) as AsyncIterable<{
        name?: string;
        size?: number;
        lastModified?: Date;
      }>) {
        const hex = item.name?.slice(dir.length) ?? '';
        if (HEX_RE.test(hex))
          yield {
            digest: `sha256:${hex}`,
            size: item.size ?? 0,
            ...(item.lastModified ? { modified: item.lastModified } : {}),
          };
      }
    } catch (err) {
      throw toStoreError('list', err);
    }
  }
}
