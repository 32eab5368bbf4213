/**
 * The one conformance suite every {@link BlobStore} backend runs (BullMQ style): call
 * `blobStoreConformance(name, factory)` from a backend's `*.test.ts`. Test support: not built
 * into dist (it imports vitest).
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { waitFor } from '@kiln/testing';
import type { BlobStore } from '../blob-store.js';
import { sha256Digest } from '../digest.js';
import type { Digest } from '../digest.js';
import { BlobNotFoundError, DigestMismatchError, InvalidBlobError } from '../errors.js';

export interface ConformanceHarness {
  store: BlobStore;
  /** Overwrites a stored blob's bytes behind the store's back. */
  corrupt(digest: Digest, bytes: Buffer): Promise<void>;
  /** Every raw entry the backend holds for this store (files or object keys), temp ones included. */
  rawEntries(): Promise<string[]>;
  /** Size above which a put takes the backend's large-blob path (multipart for S3). */
  largeThreshold: number;
  cleanup(): Promise<void>;
}

const MIB = 1024 * 1024;

/** Deterministic, incompressible-looking bytes: block i is sha256 counter output. */
function pattern(size: number, seed = 'kiln'): Buffer {
  const out = Buffer.alloc(size);
  let off = 0;
  for (let i = 0; off < size; i++) {
    const block = createHash('sha256').update(`${seed}:${i}`).digest();
    off += block.copy(out, off);
  }
  return out;
}

/** Streams `total` bytes in 1 MiB chunks of a repeated pattern, without holding them all. */
function* bigChunks(total: number): Generator<Buffer> {
  const chunk = pattern(MIB, 'big');
  for (let sent = 0; sent < total; sent += MIB) {
    // Vary each chunk so parts differ: the first 8 bytes carry the offset.
    const c = Buffer.from(chunk.subarray(0, Math.min(MIB, total - sent)));
    c.writeBigUInt64BE(BigInt(sent), 0);
    yield c;
  }
}

function digestOfChunks(chunks: Iterable<Buffer>): { digest: Digest; size: number } {
  const h = createHash('sha256');
  let size = 0;
  for (const c of chunks) {
    h.update(c);
    size += c.length;
  }
  return { digest: `sha256:${h.digest('hex')}`, size };
}

async function readAll(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of r) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function hashStream(r: Readable): Promise<{ digest: Digest; size: number }> {
  const h = createHash('sha256');
  let size = 0;
  for await (const c of r) {
    h.update(c as Buffer);
    size += (c as Buffer).length;
  }
  return { digest: `sha256:${h.digest('hex')}`, size };
}

async function listAll(store: BlobStore): Promise<{ digest: Digest; size: number }[]> {
  const out: { digest: Digest; size: number }[] = [];
  for await (const b of store.list()) out.push({ digest: b.digest, size: b.size });
  return out.sort((a, b) => a.digest.localeCompare(b.digest));
}

/** A source that yields `good` bytes and then fails with `err`. */
async function* failingSource(good: Buffer, chunk: number, err: Error): AsyncGenerator<Buffer> {
  for (let off = 0; off < good.length; off += chunk)
    yield await Promise.resolve(good.subarray(off, off + chunk));
  throw err;
}

/** A deferred promise: the test decides when a paused source continues. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

export function blobStoreConformance(
  name: string,
  factory: () => Promise<ConformanceHarness>,
): void {
  describe(`BlobStore conformance: ${name}`, () => {
    let h: ConformanceHarness;
    let store: BlobStore;

    beforeEach(async () => {
      h = await factory();
      store = h.store;
    });
    afterEach(async () => {
      await h.cleanup();
    });

    describe('round trip', () => {
      it('stores a buffer and reads it back, with stat/has', async () => {
        const data = pattern(100_000);
        const info = await store.put(undefined, data, { mediaType: 'application/octet-stream' });
        expect(info).toEqual({ digest: sha256Digest(data), size: data.length });
        expect(await store.stat(info.digest)).toEqual({ size: data.length });
        expect(await store.has(info.digest)).toBe(true);
        expect((await readAll(await store.get(info.digest))).equals(data)).toBe(true);
      });

      it('stores a stream and an empty blob', async () => {
        const data = pattern(3 * 65536 + 17, 'stream');
        const info = await store.put(
          sha256Digest(data),
          Readable.from([data.subarray(0, 1000), data.subarray(1000)]),
        );
        expect(info.digest).toBe(sha256Digest(data));
        expect((await readAll(await store.get(info.digest))).equals(data)).toBe(true);

        const empty = await store.put(undefined, Buffer.alloc(0));
        expect(empty).toEqual({ digest: sha256Digest(Buffer.alloc(0)), size: 0 });
        expect((await readAll(await store.get(empty.digest))).length).toBe(0);
      });

      it('answers a put of a blob it already has, with its size, without reading the source', async () => {
        const data = pattern(5000, 'exists');
        const first = await store.put(undefined, data);
        let read = false;
        const source = new Readable({
          read() {
            read = true;
            this.push(null);
          },
        });
        expect(await store.put(first.digest, source, { size: first.size })).toEqual(first);
        expect(read).toBe(false);
        expect(source.destroyed).toBe(true);
        // A size that is not the stored one is no answer: the content is read and checked.
        await expect(store.put(first.digest, Buffer.alloc(0), { size: 0 })).rejects.toBeInstanceOf(
          DigestMismatchError,
        );
        expect(await store.stat(first.digest)).toEqual({ size: first.size });
      });

      it('is idempotent for identical content', async () => {
        const data = pattern(5000, 'idem');
        const a = await store.put(undefined, data);
        const b = await store.put(a.digest, data);
        expect(b).toEqual(a);
        expect(await listAll(store)).toEqual([a]);
      });
    });

    describe('digest verification', () => {
      it('rejects content that does not match the expected digest, storing nothing', async () => {
        const data = pattern(4096, 'a');
        const wrong = sha256Digest('something else');
        const err = await store.put(wrong, data).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(DigestMismatchError);
        expect((err as DigestMismatchError).expected).toBe(wrong);
        expect((err as DigestMismatchError).actual).toBe(sha256Digest(data));
        expect(await store.has(wrong)).toBe(false);
        expect(await store.has(sha256Digest(data))).toBe(false);
        expect(await h.rawEntries()).toEqual([]);
      });

      it('rejects a large mismatching blob on the large-blob path, storing nothing', async () => {
        const data = pattern(h.largeThreshold * 2 + 123, 'large-mismatch');
        const wrong = sha256Digest('nope');
        await expect(store.put(wrong, Readable.from([data]))).rejects.toBeInstanceOf(
          DigestMismatchError,
        );
        expect(await store.has(wrong)).toBe(false);
        expect(await listAll(store)).toEqual([]);
        expect(await h.rawEntries()).toEqual([]);
      });

      it('rejects a size mismatch and malformed digests', async () => {
        const data = pattern(1000, 'size');
        await expect(store.put(undefined, data, { size: 999 })).rejects.toBeInstanceOf(
          InvalidBlobError,
        );
        expect(await store.has(sha256Digest(data))).toBe(false);
        await expect(store.put('sha256:abc', data)).rejects.toBeInstanceOf(InvalidBlobError);
        await expect(store.get('md5:00' as Digest)).rejects.toBeInstanceOf(InvalidBlobError);
      });

      it('fails a full read of a blob corrupted behind its back', async () => {
        const data = pattern(70_000, 'corrupt');
        const { digest } = await store.put(undefined, data);
        const bad = Buffer.from(data);
        bad[12_345] = (bad[12_345] ?? 0) ^ 0xff;
        await h.corrupt(digest, bad);
        const err = await readAll(await store.get(digest)).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(DigestMismatchError);
        expect((err as DigestMismatchError).expected).toBe(digest);
        expect((err as DigestMismatchError).actual).toBe(sha256Digest(bad));
        // The message names both digests, and the bad copy is gone.
        expect((err as DigestMismatchError).message).toContain(digest);
        expect((err as DigestMismatchError).message).toContain(sha256Digest(bad));
        expect((err as DigestMismatchError).details.removed).toBe(true);
        expect(await store.has(digest)).toBe(false);
        // Truncation is caught too.
        await store.put(digest, data, { size: data.length });
        await h.corrupt(digest, data.subarray(0, 100));
        await expect(readAll(await store.get(digest))).rejects.toBeInstanceOf(DigestMismatchError);
      });

      it('replaces a corrupt blob on the next put of the right content', async () => {
        const data = pattern(70_000, 'repair');
        const { digest } = await store.put(undefined, data);
        const bad = Buffer.from(data);
        bad[7] = (bad[7] ?? 0) ^ 0x01; // same size: the put's fast path alone would keep it
        await h.corrupt(digest, bad);
        await expect(readAll(await store.get(digest))).rejects.toBeInstanceOf(DigestMismatchError);
        // A put with the size, as a worker's upload of a layer makes it.
        const source = Readable.from([data]);
        expect(await store.put(digest, source, { size: data.length })).toEqual({
          digest,
          size: data.length,
        });
        expect((await readAll(await store.get(digest))).equals(data)).toBe(true);
        // A range read is not verified, and so removes nothing.
        await h.corrupt(digest, bad);
        await readAll(await store.get(digest, { offset: 1, length: 10 }));
        expect(await store.has(digest)).toBe(true);
      });
    });

    describe('range reads', () => {
      it('reads offsets and lengths, clamped at the end', async () => {
        const data = pattern(10_000, 'range');
        const { digest } = await store.put(undefined, data);
        const read = async (offset?: number, length?: number): Promise<Buffer> =>
          readAll(await store.get(digest, { offset, length }));
        expect((await read(100, 50)).equals(data.subarray(100, 150))).toBe(true);
        expect((await read(9_990)).equals(data.subarray(9_990))).toBe(true);
        expect((await read(9_000, 5_000)).equals(data.subarray(9_000))).toBe(true);
        expect((await read(0, 10)).equals(data.subarray(0, 10))).toBe(true);
        expect((await read(500, 0)).length).toBe(0);
        expect((await read(10_000)).length).toBe(0);
        await expect(store.get(digest, { offset: 10_001 })).rejects.toBeInstanceOf(
          InvalidBlobError,
        );
        await expect(store.get(digest, { offset: -1 })).rejects.toBeInstanceOf(InvalidBlobError);
      });
    });

    describe('atomicity', () => {
      it('leaves nothing when the source fails midway (small blob)', async () => {
        const boom = new Error('source broke');
        const err = await store
          .put(undefined, failingSource(pattern(50_000, 'fail'), 10_000, boom))
          .catch((e: unknown) => e);
        expect(err).toBe(boom);
        expect(await listAll(store)).toEqual([]);
        expect(await h.rawEntries()).toEqual([]);
      });

      it('leaves nothing when the source fails after several parts (large blob)', async () => {
        const boom = new Error('source broke late');
        const good = pattern(h.largeThreshold * 2 + 4096, 'fail-large');
        const err = await store
          .put(undefined, failingSource(good, MIB, boom))
          .catch((e: unknown) => e);
        expect(err).toBe(boom);
        const err2 = await store
          .put(sha256Digest('whatever'), failingSource(good, MIB, boom))
          .catch((e: unknown) => e);
        expect(err2).toBe(boom);
        expect(await listAll(store)).toEqual([]);
        expect(await h.rawEntries()).toEqual([]);
      });

      it('shows no partial blob while a put is in flight', async () => {
        const data = pattern(h.largeThreshold + MIB, 'inflight');
        const digest = sha256Digest(data);
        const gate = deferred();
        const reached = deferred();
        async function* paused(): AsyncGenerator<Buffer> {
          yield data.subarray(0, h.largeThreshold + 1);
          reached.resolve();
          await gate.promise;
          yield data.subarray(h.largeThreshold + 1);
        }
        const put = store.put(digest, paused());
        await reached.promise;
        expect(await store.has(digest)).toBe(false);
        expect(await listAll(store)).toEqual([]);
        gate.resolve();
        expect(await put).toEqual({ digest, size: data.length });
        expect(await store.has(digest)).toBe(true);
      });
    });

    describe('concurrency', () => {
      it('accepts concurrent puts of the same blob', async () => {
        const data = pattern(2 * MIB + 1, 'same');
        const digest = sha256Digest(data);
        const results = await Promise.all(
          Array.from({ length: 6 }, (_, i) =>
            store.put(
              i % 2 === 0 ? digest : undefined,
              Readable.from([data.subarray(0, MIB), data.subarray(MIB)]),
            ),
          ),
        );
        for (const r of results) expect(r).toEqual({ digest, size: data.length });
        expect(await listAll(store)).toEqual([{ digest, size: data.length }]);
        expect((await readAll(await store.get(digest))).equals(data)).toBe(true);
        const raw = await h.rawEntries();
        expect(raw).toHaveLength(1);
      });

      it('accepts concurrent puts of the same large blob', async () => {
        const data = pattern(h.largeThreshold * 2 + 99, 'same-large');
        const digest = sha256Digest(data);
        const results = await Promise.all([
          store.put(undefined, Readable.from([data])),
          store.put(digest, Readable.from([data])),
          store.put(undefined, Readable.from([data])),
        ]);
        for (const r of results) expect(r).toEqual({ digest, size: data.length });
        expect(await listAll(store)).toEqual([{ digest, size: data.length }]);
        expect(await h.rawEntries()).toHaveLength(1);
        expect(await hashStream(await store.get(digest))).toEqual({ digest, size: data.length });
      });
    });

    it('streams an 80 MiB blob in and out', async () => {
      const total = 80 * MIB;
      const expected = digestOfChunks(bigChunks(total));
      const info = await store.put(undefined, Readable.from(bigChunks(total)), { size: total });
      expect(info).toEqual(expected);
      expect(await hashStream(await store.get(info.digest))).toEqual(expected);
      const tail = await readAll(await store.get(info.digest, { offset: total - 10 }));
      expect(tail.equals([...bigChunks(total)].at(-1)!.subarray(MIB - 10))).toBe(true);
      expect(await h.rawEntries()).toHaveLength(1);
    });

    it('lists exactly the stored blobs', async () => {
      expect(await listAll(store)).toEqual([]);
      const blobs = await Promise.all(
        [1, 2, 3].map((n) => store.put(undefined, pattern(n * 1000, `list${n}`))),
      );
      expect(await listAll(store)).toEqual(
        [...blobs].sort((a, b) => a.digest.localeCompare(b.digest)),
      );
    });

    it('lists when each blob was last used; a touch or a put of the same content moves it on', async () => {
      const { digest, size } = await store.put(undefined, pattern(3000, 'touch'), {
        mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
      });
      const listed = async (): Promise<number> => {
        for await (const b of store.list())
          if (b.digest === digest) return b.modified?.getTime() ?? NaN;
        return NaN;
      };
      const modified = async (): Promise<number> =>
        (await store.lastUsed(digest))?.getTime() ?? NaN;
      const m0 = await modified();
      expect(Number.isFinite(m0)).toBe(true);
      expect(await listed()).toBe(m0);
      // Stores keep times at their own granularity (S3: seconds): touch until the time moves.
      await waitFor('a touch to move the modified time', async () => {
        expect(await store.touch(digest)).toBe(true);
        return (await modified()) > m0;
      });
      const m1 = await modified();
      await waitFor('a repeated put to move it again', async () => {
        await store.put(digest, pattern(3000, 'touch'), { size });
        return (await modified()) > m1;
      });
      expect((await readAll(await store.get(digest))).equals(pattern(3000, 'touch'))).toBe(true);
      expect(await store.touch(sha256Digest('never stored'))).toBe(false);
      expect(await store.lastUsed(sha256Digest('never stored'))).toBeUndefined();
    });

    it('deletes', async () => {
      const { digest } = await store.put(undefined, pattern(2000, 'del'));
      const keep = await store.put(undefined, pattern(2000, 'keep'));
      expect(await store.delete(digest)).toBe(true);
      expect(await store.has(digest)).toBe(false);
      expect(await store.stat(digest)).toBeUndefined();
      expect(await store.delete(digest)).toBe(false);
      expect(await listAll(store)).toEqual([keep]);
    });

    it('reports missing blobs with BlobNotFoundError', async () => {
      const missing = sha256Digest('never stored');
      const err = await store.get(missing).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(BlobNotFoundError);
      expect((err as BlobNotFoundError).digest).toBe(missing);
      expect((err as BlobNotFoundError).code).toBe('STORE_BLOB_NOT_FOUND');
      expect(await store.stat(missing)).toBeUndefined();
      expect(await store.has(missing)).toBe(false);
    });
  });
}
