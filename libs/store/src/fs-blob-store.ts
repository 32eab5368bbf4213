import { createHash, randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, mkdir, open, readdir, rename, stat, unlink, utimes } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { cleanupAfter } from '@kiln/protocol';
import { pipeline } from 'node:stream';
import type { Readable } from 'node:stream';
import type { BlobInfo, BlobSource, BlobStore, GetOptions, PutOptions } from './blob-store.js';
import { DigestingStream, digestHex, parseDigest } from './digest.js';
import type { Digest } from './digest.js';
import {
  BlobNotFoundError,
  DigestMismatchError,
  InvalidBlobError,
  StoreUnavailableError,
} from './errors.js';
import { discardSource, emptyStream, sourceChunks } from './source.js';

const HEX_RE = /^[0-9a-f]{64}$/;
const TMP_PREFIX = '.tmp-';
/** Read chunk size of `get`: 1 MiB rather than 64 KiB, for the streams layers go through. */
const READ_CHUNK = 1024 * 1024;

export interface FsBlobStoreOptions {
  /** Store root; blobs live in `<root>/blobs/sha256/<hex>`, the OCI image-layout layout. */
  root: string;
  /** fsync each blob before it becomes visible (default true). */
  fsync?: boolean;
}

function isErrno(err: unknown, code: string): boolean {
  return err instanceof Error && (err as NodeJS.ErrnoException).code === code;
}

function unavailable(what: string, err: unknown): StoreUnavailableError {
  const msg = err instanceof Error ? err.message : String(err);
  return new StoreUnavailableError(`filesystem store: ${what}: ${msg}`, { cause: err });
}

/**
 * A {@link BlobStore} on a local filesystem. A put writes a temp file (`.tmp-<uuid>`) in the blob
 * directory and renames it onto `<hex>` once verified, so a blob appears whole or not at all and
 * concurrent puts of the same content simply replace one another. Temp files left by a crash are
 * never listed; {@link FsBlobStore.removeStaleTemps} clears them.
 */
export class FsBlobStore implements BlobStore {
  readonly root: string;
  private readonly dir: string;
  private readonly fsync: boolean;

  constructor(opts: FsBlobStoreOptions) {
    this.root = opts.root;
    this.dir = join(opts.root, 'blobs', 'sha256');
    this.fsync = opts.fsync ?? true;
  }

  /** Path of a blob's file (it may not exist). */
  pathOf(digest: Digest): string {
    return join(this.dir, digestHex(parseDigest(digest)));
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
      if (opts.size !== undefined && (await this.stat(expected))?.size === opts.size) {
        discardSource(source);
        await this.touch(expected);
        return { digest: expected, size: opts.size };
      }
    }
    try {
      await mkdir(this.dir, { recursive: true });
    } catch (err) {
      throw unavailable('mkdir', err);
    }
    const tmp = join(this.dir, `${TMP_PREFIX}${randomUUID()}`);
    let fh: FileHandle | undefined;
    try {
      try {
        fh = await open(tmp, 'wx', 0o644);
      } catch (err) {
        throw unavailable('create temp file', err);
      }
      const hash = createHash('sha256');
      let size = 0;
      for await (const chunk of sourceChunks(source)) {
        hash.update(chunk);
        size += chunk.length;
        try {
          await fh.write(chunk);
        } catch (err) {
          throw unavailable('write', err);
        }
      }
      const digest: Digest = `sha256:${hash.digest('hex')}`;
      if (expected !== undefined && digest !== expected) {
        throw new DigestMismatchError(expected, digest, { details: { size } });
      }
      if (opts.size !== undefined && size !== opts.size) {
        throw new InvalidBlobError(`size mismatch: expected ${opts.size} bytes, got ${size}`, {
          details: { digest, expected: opts.size, actual: size },
        });
      }
      try {
        if (this.fsync) await fh.datasync();
        await fh.close();
        fh = undefined;
        await chmod(tmp, 0o444);
        await rename(tmp, join(this.dir, digestHex(digest)));
      } catch (err) {
        throw unavailable('commit', err);
      }
      return { digest, size };
    } catch (err) {
      // The put's own error is the one reported; a failed cleanup is attached to it.
      return cleanupAfter(
        err,
        () => fh?.close(),
        () =>
          unlink(tmp).catch((unlinkErr: unknown) => {
            if (!isErrno(unlinkErr, 'ENOENT'))
              throw unavailable('remove temp file after failed put', unlinkErr);
          }),
      );
    }
  }

  async get(digest: Digest, opts: GetOptions = {}): Promise<Readable> {
    const path = this.pathOf(digest);
    let st: { size: number; ino: number };
    try {
      st = await stat(path);
    } catch (err) {
      if (isErrno(err, 'ENOENT')) throw new BlobNotFoundError(digest);
      throw unavailable('stat', err);
    }
    const { start, end, full } = rangeOf(digest, st.size, opts);
    if (end < start) return emptyStream();
    // Large chunks: a layer read goes through a hash, a decompressor and a tar parser per chunk.
    const file = createReadStream(path, { start, end, highWaterMark: READ_CHUNK });
    if (!full) return file;
    const verifier = new DigestingStream(digest, st.size, () =>
      this.#removeCorrupt(digest, st.ino),
    );
    return pipeline(file, verifier, () => undefined);
  }

  /**
   * Removes the copy of `digest` that a verified read found corrupt, so that the next put of the
   * right content stores it again (the put's fast path trusts a stored blob of the right size).
   * Only that copy: it is moved aside first, and a blob a concurrent put renamed in meanwhile (a
   * new inode) is put back.
   */
  async #removeCorrupt(digest: Digest, ino: number): Promise<boolean> {
    const path = this.pathOf(digest);
    const aside = join(this.dir, `${TMP_PREFIX}corrupt-${randomUUID()}`);
    try {
      await rename(path, aside);
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return false;
      throw unavailable('remove corrupt blob', err);
    }
    if ((await stat(aside)).ino !== ino) {
      // A good copy replaced the bad one between the read and now: keep it.
      await rename(aside, path);
      return false;
    }
    await unlink(aside);
    return true;
  }

  async stat(digest: Digest): Promise<{ size: number } | undefined> {
    const path = this.pathOf(digest);
    try {
      const st = await stat(path);
      return { size: st.size };
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return undefined;
      throw unavailable('stat', err);
    }
  }

  async has(digest: Digest): Promise<boolean> {
    return (await this.stat(digest)) !== undefined;
  }

  async lastUsed(digest: Digest): Promise<Date | undefined> {
    try {
      return (await stat(this.pathOf(digest))).mtime;
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return undefined;
      throw unavailable('stat', err);
    }
  }

  async touch(digest: Digest): Promise<boolean> {
    const now = new Date();
    try {
      await utimes(this.pathOf(digest), now, now);
      return true;
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return false;
      throw unavailable('touch', err);
    }
  }

  async delete(digest: Digest): Promise<boolean> {
    try {
      await unlink(this.pathOf(digest));
      return true;
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return false;
      throw unavailable('delete', err);
    }
  }

  async *list(): AsyncIterable<BlobInfo> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return;
      throw unavailable('list', err);
    }
    names.sort();
    for (const name of names) {
      if (!HEX_RE.test(name)) continue;
      const digest: Digest = `sha256:${name}`;
      let st;
      try {
        st = await stat(join(this.dir, name));
      } catch (err) {
        if (isErrno(err, 'ENOENT')) continue;
        throw unavailable('stat', err);
      }
      yield { digest, size: st.size, modified: st.mtime };
    }
  }

  /**
   * Removes temp files older than `olderThanMs` (left by a process that died mid-put). Safe to
   * run while puts are in flight as long as no put lasts longer than `olderThanMs`.
   */
  async removeStaleTemps(olderThanMs = 24 * 3600_000): Promise<number> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return 0;
      throw unavailable('list', err);
    }
    let removed = 0;
    const cutoff = Date.now() - olderThanMs;
    for (const name of names) {
      if (!name.startsWith(TMP_PREFIX)) continue;
      const path = join(this.dir, name);
      try {
        const st = await stat(path);
        if (st.mtimeMs > cutoff) continue;
        await unlink(path);
        removed++;
      } catch (err) {
        if (!isErrno(err, 'ENOENT')) throw unavailable('remove stale temp file', err);
      }
    }
    return removed;
  }
}

/**
 * Validates a range against a blob's size. `end` is inclusive (node's convention) and may be
 * below `start` for an empty range; `full` is true when the range covers the whole blob.
 */
export function rangeOf(
  digest: Digest,
  size: number,
  opts: GetOptions,
): { start: number; end: number; full: boolean } {
  const start = opts.offset ?? 0;
  if (!Number.isSafeInteger(start) || start < 0 || start > size) {
    throw new InvalidBlobError(`offset ${start} out of range for blob of ${size} bytes`, {
      details: { digest, offset: start, size },
    });
  }
  if (opts.length !== undefined && (!Number.isSafeInteger(opts.length) || opts.length < 0)) {
    throw new InvalidBlobError(`invalid length ${opts.length}`, {
      details: { digest, length: opts.length },
    });
  }
  const stop = opts.length === undefined ? size : Math.min(size, start + opts.length);
  return { start, end: stop - 1, full: start === 0 && stop === size };
}
