import { createHash } from 'node:crypto';
import type { Hash } from 'node:crypto';
import { Transform } from 'node:stream';
import type { TransformCallback } from 'node:stream';
import { DigestMismatchError, InvalidBlobError } from './errors.js';

/** A content digest, `sha256:<64 lowercase hex>`: the only algorithm the store accepts. */
export type Digest = `sha256:${string}`;

const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;

export function isDigest(s: string): s is Digest {
  return DIGEST_RE.test(s);
}

/** Validates `s` as a digest; throws {@link InvalidBlobError} otherwise. */
export function parseDigest(s: string): Digest {
  if (!isDigest(s))
    throw new InvalidBlobError(`invalid digest ${JSON.stringify(s)}`, { details: { digest: s } });
  return s;
}

/** The hex part of a digest. */
export function digestHex(d: Digest): string {
  return d.slice('sha256:'.length);
}

export function sha256Digest(data: Buffer | string): Digest {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/**
 * A pass-through stream that hashes and counts what flows through it. When `expected` is given,
 * the stream errors with {@link DigestMismatchError} instead of ending if the content differs, so
 * a consumer never sees a clean end on corrupt data.
 */
export class DigestingStream extends Transform {
  private readonly hash: Hash = createHash('sha256');
  private bytes = 0;
  private result: Digest | undefined;

  /**
   * `onMismatch` runs (awaited) before the mismatch error is emitted: the store removes the bad
   * copy there, so a reader that sees the error can put the right content straight away.
   */
  constructor(
    private readonly expected?: Digest,
    private readonly expectedSize?: number,
    private readonly onMismatch?: (actual: Digest) => Promise<boolean>,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    const actual: Digest = `sha256:${this.hash.digest('hex')}`;
    this.result = actual;
    if (this.expected !== undefined && actual !== this.expected) {
      const expected = this.expected;
      const fail = (removed: boolean): void =>
        cb(
          new DigestMismatchError(expected, actual, {
            details: { size: this.bytes, ...(removed ? { removed } : {}) },
          }),
        );
      if (!this.onMismatch) return fail(false);
      this.onMismatch(actual).then(fail, () => fail(false));
      return;
    }
    if (this.expectedSize !== undefined && this.bytes !== this.expectedSize) {
      cb(
        new InvalidBlobError(
          `size mismatch: expected ${this.expectedSize} bytes, got ${this.bytes}`,
          {
            details: { digest: actual, expected: this.expectedSize, actual: this.bytes },
          },
        ),
      );
      return;
    }
    cb();
  }

  /** Bytes seen so far. */
  get size(): number {
    return this.bytes;
  }

  /** The digest of everything that flowed through; only after the stream has ended. */
  get digest(): Digest {
    if (this.result === undefined) throw new Error('DigestingStream: digest read before end');
    return this.result;
  }
}
