import { KilnError, registerErrorClass } from '@kiln/protocol';
import type { ErrorDetails, KilnErrorOptions } from '@kiln/protocol';

/**
 * A blob or manifest whose bytes do not hash to the digest it was requested by. The store's error
 * is reused so that a mismatch reads the same wherever it is detected (registry, store, cache).
 */
export { DigestMismatchError } from '@kiln/store';

function str(details: ErrorDetails, key: string): string {
  const v = details[key];
  return typeof v === 'string' ? v : '';
}

/**
 * The registry could not be reached, reset the connection, or answered 5xx/429 after the bounded
 * retries. The same request may succeed later.
 */
export class RegistryUnavailableError extends KilnError {
  static readonly CODE = 'REGISTRY_UNAVAILABLE';
  constructor(message: string, opts: KilnErrorOptions = {}) {
    super(RegistryUnavailableError.CODE, message, { retryable: true, ...opts });
  }
}

/** The repository, tag, manifest or blob does not exist (404, or `NAME_UNKNOWN`/`MANIFEST_UNKNOWN`). */
export class ImageNotFoundError extends KilnError {
  static readonly CODE = 'REGISTRY_IMAGE_NOT_FOUND';
  /** The reference (or `repo@digest` of a blob) that was not found. */
  readonly ref: string;
  constructor(ref: string, message = `${ref}: not found`, opts: KilnErrorOptions = {}) {
    super(ImageNotFoundError.CODE, message, { ...opts, details: { ...opts.details, ref } });
    this.ref = ref;
  }
}

/** The registry refused the credentials (or their absence): 401/403, or a failed token exchange. */
export class RegistryAuthError extends KilnError {
  static readonly CODE = 'REGISTRY_AUTH';
  readonly host: string;
  constructor(host: string, message: string, opts: KilnErrorOptions = {}) {
    super(RegistryAuthError.CODE, message, { ...opts, details: { ...opts.details, host } });
    this.host = host;
  }
}

/** A manifest or index that is not valid JSON, has an unknown media type, or lacks required fields. */
export class ManifestInvalidError extends KilnError {
  static readonly CODE = 'REGISTRY_MANIFEST_INVALID';
  constructor(message: string, opts: KilnErrorOptions = {}) {
    super(ManifestInvalidError.CODE, message, opts);
  }
}

/** An index has no manifest for the requested platform; `available` lists the ones it has. */
export class PlatformNotFoundError extends KilnError {
  static readonly CODE = 'REGISTRY_PLATFORM_NOT_FOUND';
  readonly platform: string;
  readonly available: readonly string[];
  constructor(
    ref: string,
    platform: string,
    available: readonly string[],
    opts: KilnErrorOptions = {},
  ) {
    super(
      PlatformNotFoundError.CODE,
      `${ref}: no image for platform ${platform} (available: ${available.length > 0 ? available.join(', ') : 'none'})`,
      { ...opts, details: { ...opts.details, ref, platform, available: available.join(',') } },
    );
    this.platform = platform;
    this.available = available;
  }
}

/** Any other refusal by the registry (4xx other than 401/403/404/429), with its status and error codes. */
export class RegistryRequestError extends KilnError {
  static readonly CODE = 'REGISTRY_REQUEST';
  readonly status: number;
  constructor(status: number, message: string, opts: KilnErrorOptions = {}) {
    super(RegistryRequestError.CODE, message, { ...opts, details: { ...opts.details, status } });
    this.status = status;
  }
}

registerErrorClass(
  RegistryUnavailableError.CODE,
  (m, d, r) => new RegistryUnavailableError(m, { details: d, retryable: r }),
);
registerErrorClass(
  ImageNotFoundError.CODE,
  (m, d) => new ImageNotFoundError(str(d, 'ref'), m, { details: d }),
);
registerErrorClass(
  RegistryAuthError.CODE,
  (m, d) => new RegistryAuthError(str(d, 'host'), m, { details: d }),
);
registerErrorClass(
  ManifestInvalidError.CODE,
  (m, d) => new ManifestInvalidError(m, { details: d }),
);
registerErrorClass(PlatformNotFoundError.CODE, (_m, d) => {
  const available = str(d, 'available');
  return new PlatformNotFoundError(
    str(d, 'ref'),
    str(d, 'platform'),
    available === '' ? [] : available.split(','),
    {
      details: d,
    },
  );
});
registerErrorClass(RegistryRequestError.CODE, (m, d) => {
  const status = typeof d.status === 'number' ? d.status : 0;
  return new RegistryRequestError(status, m, { details: d });
});
