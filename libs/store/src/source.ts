import { Readable } from 'node:stream';
import type { BlobSource } from './blob-store.js';

/** Iterates a blob source as Buffers, whatever its shape. */
export async function* sourceChunks(source: BlobSource): AsyncGenerator<Buffer> {
  if (Buffer.isBuffer(source)) {
    yield source;
    return;
  }
  for await (const chunk of source as AsyncIterable<Uint8Array | string>) {
    if (typeof chunk === 'string') yield Buffer.from(chunk);
    else
      yield Buffer.isBuffer(chunk)
        ? chunk
        : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  }
}

/**
 * Regroups a stream of chunks into parts of exactly `partSize` bytes (the last one shorter).
 * Never yields an empty part, except a single one for an empty source.
 */
export async function* fixedParts(
  chunks: AsyncIterable<Buffer>,
  partSize: number,
): AsyncGenerator<Buffer> {
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let yielded = false;
  for await (let chunk of chunks) {
    while (pendingBytes + chunk.length >= partSize) {
      const take = partSize - pendingBytes;
      pending.push(chunk.subarray(0, take));
      chunk = chunk.subarray(take);
      yield Buffer.concat(pending, partSize);
      yielded = true;
      pending = [];
      pendingBytes = 0;
    }
    if (chunk.length > 0) {
      pending.push(chunk);
      pendingBytes += chunk.length;
    }
  }
  if (pendingBytes > 0 || !yielded) yield Buffer.concat(pending, pendingBytes);
}

async function* nothing(): AsyncGenerator<Buffer> {}

/** A readable that ends at once (an empty range). */
export function emptyStream(): Readable {
  return Readable.from(nothing());
}

/** Releases a source that will not be read (an HTTP download, a file stream). */
export function discardSource(source: BlobSource): void {
  if (source instanceof Readable) source.destroy();
}
