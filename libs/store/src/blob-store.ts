import type { Readable } from 'node:stream';
import type { Digest } from './digest.js';

/** Where a blob's bytes come from: a whole buffer, or a stream read once. */
export type BlobSource = Buffer | Readable | AsyncIterable<Uint8Array>;

export interface PutOptions {
  /** Expected size in bytes; a different size fails the put and stores nothing. */
  size?: number;
  /** OCI media type, kept as metadata where the backend can (S3 Content-Type). */
  mediaType?: string;
}

export interface GetOptions {
  /** First byte to read (default 0). */
  offset?: number;
  /** Bytes to read from `offset` (default: to the end). */
  length?: number;
}

export interface BlobInfo {
  digest: Digest;
  size: number;
  /**
   * Set by `list()`: when the blob was stored, or touched where the backend's listing shows it
   * (a lower bound of {@link BlobStore.lastUsed}, which a collector checks before deleting).
   */
  modified?: Date;
}

/**
 * A content-addressed blob store. Blobs are named by the sha256 of their bytes.
 *
 * Contract, for every implementation (checked by `blobStoreConformance`):
 * - `put` hashes while it streams; a blob becomes visible to `get`/`stat`/`list` only once it is
 *   complete and verified, atomically. A put that fails (source error, digest or size mismatch,
 *   backend failure) leaves nothing visible.
 * - Concurrent puts of the same content are safe: both succeed and one blob remains.
 * - Full reads are verified: the stream errors with `DigestMismatchError` after the last byte if
 *   the stored bytes do not hash to the digest. Range reads are not verified.
 * - Errors are `KilnError`s: `BlobNotFoundError`, `DigestMismatchError`, `InvalidBlobError`,
 *   `StoreUnavailableError` (retryable).
 */
export interface BlobStore {
  /**
   * Stores `source`. With `expected`, the content must hash to it, else `DigestMismatchError` and
   * nothing is stored. Reads the source whole, except when `expected` is already stored with the
   * given `size`: then it resolves at once without reading it (a Readable source is destroyed),
   * as containerd's content store answers "already exists". Idempotent for identical content.
   */
  put(expected: Digest | undefined, source: BlobSource, opts?: PutOptions): Promise<BlobInfo>;
  /** Opens a blob for reading; throws `BlobNotFoundError` when absent. */
  get(digest: Digest, opts?: GetOptions): Promise<Readable>;
  /** Size of a blob, or undefined when absent. */
  stat(digest: Digest): Promise<{ size: number } | undefined>;
  has(digest: Digest): Promise<boolean>;
  /** Removes a blob; resolves true if it existed. Readers already streaming it may fail. */
  delete(digest: Digest): Promise<boolean>;
  /**
   * Marks a blob as in use now (its `modified` time), so that the store's garbage collector, which
   * spares blobs used within its grace period, keeps it. Resolves false when absent. A put of
   * content already stored touches it too.
   */
  touch(digest: Digest): Promise<boolean>;
  /** When the blob was stored or last touched; undefined when absent. */
  lastUsed(digest: Digest): Promise<Date | undefined>;
  /** Every complete blob, in no particular order, with its `modified` time. */
  list(): AsyncIterable<BlobInfo>;
}
