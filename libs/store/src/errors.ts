import { KilnError, registerErrorClass } from '@kiln/protocol';
import type { ErrorDetails, KilnErrorOptions } from '@kiln/protocol';

/** The blob named by `digest` is not in the store. */
export class BlobNotFoundError extends KilnError {
  static readonly CODE = 'STORE_BLOB_NOT_FOUND';
  readonly digest: string;

  constructor(digest: string, opts: KilnErrorOptions = {}) {
    super(BlobNotFoundError.CODE, `blob ${digest} not found`, {
      ...opts,
      details: { ...opts.details, digest },
    });
    this.digest = digest;
  }
}

/**
 * Content does not hash to the digest it was stored or requested under: on put, nothing was
 * stored; on read, the stored bytes are corrupt (the stream errors after the last byte, and the
 * store has removed the bad copy, `details.removed`, so the next put of the right content stores
 * it again). The message names both digests.
 */
export class DigestMismatchError extends KilnError {
  static readonly CODE = 'STORE_DIGEST_MISMATCH';
  readonly expected: string;
  readonly actual: string;

  constructor(expected: string, actual: string, opts: KilnErrorOptions = {}) {
    const removed = opts.details?.removed === true;
    super(
      DigestMismatchError.CODE,
      removed
        ? `blob ${expected} is corrupt in the store: its bytes hash to ${actual} (the bad copy was removed; the next put of its content stores it again)`
        : `digest mismatch: expected ${expected}, got ${actual}`,
      { ...opts, details: { ...opts.details, expected, actual } },
    );
    this.expected = expected;
    this.actual = actual;
  }
}

/** A digest string that is not `sha256:<64 lowercase hex>`, or a size that does not match. */
export class InvalidBlobError extends KilnError {
  static readonly CODE = 'STORE_INVALID_BLOB';

  constructor(message: string, opts: KilnErrorOptions = {}) {
    super(InvalidBlobError.CODE, message, opts);
  }
}

/** The backend could not be reached or failed transiently; the same call may succeed later. */
export class StoreUnavailableError extends KilnError {
  static readonly CODE = 'STORE_UNAVAILABLE';

  constructor(message: string, opts: KilnErrorOptions = {}) {
    super(StoreUnavailableError.CODE, message, { retryable: true, ...opts });
  }
}

/** A store setting out of its range (e.g. a negative touch refresh). */
export class StoreConfigError extends KilnError {
  static readonly CODE = 'STORE_CONFIG_INVALID';

  constructor(message: string, opts: KilnErrorOptions = {}) {
    super(StoreConfigError.CODE, message, opts);
  }
}

function str(details: ErrorDetails, key: string): string {
  const v = details[key];
  return typeof v === 'string' ? v : '';
}

registerErrorClass(
  BlobNotFoundError.CODE,
  (_m, d) => new BlobNotFoundError(str(d, 'digest'), { details: d }),
);
registerErrorClass(DigestMismatchError.CODE, (m, d) =>
  str(d, 'expected') === ''
    ? Object.assign(new DigestMismatchError('', '', { details: d }), { message: m })
    : new DigestMismatchError(str(d, 'expected'), str(d, 'actual'), { details: d }),
);
registerErrorClass(InvalidBlobError.CODE, (m, d) => new InvalidBlobError(m, { details: d }));
registerErrorClass(
  StoreUnavailableError.CODE,
  (m, d, r) => new StoreUnavailableError(m, { details: d, retryable: r }),
);
