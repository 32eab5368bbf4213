/**
 * Kiln's typed errors. Every failure that crosses a package or a wire has a class here (or a
 * subclass registered with {@link registerErrorClass}), with a stable string `code`, a `retryable`
 * flag and the native `cause`. Structured fields (`details`) travel over gRPC; see `grpc-status.ts`.
 */
export type ErrorDetails = Record<string, string | number | boolean | undefined>;

export interface KilnErrorOptions {
  cause?: unknown;
  retryable?: boolean;
  details?: ErrorDetails;
}

export class KilnError extends Error {
  /** Stable machine-readable code, e.g. `LLB_CYCLE`. Never changes once released. */
  readonly code: string;
  /** True when the same request may succeed if retried unchanged. */
  readonly retryable: boolean;
  /** Structured data about the failure (vertex digest, Dockerfile line...). */
  readonly details: ErrorDetails;

  constructor(code: string, message: string, opts: KilnErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = code;
    this.retryable = opts.retryable ?? false;
    this.details = opts.details ?? {};
  }
}

type KilnErrorFactory = (message: string, details: ErrorDetails, retryable: boolean) => KilnError;

const factories = new Map<string, KilnErrorFactory>();

/**
 * Registers how to rebuild an error class from its wire form (code, message, details), so that a
 * client receives the same class the server threw. Codes are unique; registering twice replaces.
 */
export function registerErrorClass(code: string, factory: KilnErrorFactory): void {
  factories.set(code, factory);
}

/** Rebuilds a typed error from its wire form; unknown codes become a plain {@link KilnError}. */
export function reviveError(
  code: string,
  message: string,
  details: ErrorDetails,
  retryable: boolean,
): KilnError {
  const f = factories.get(code);
  if (f) return f(message, details, retryable);
  return new KilnError(code, message, { details, retryable });
}

/** Wraps anything thrown into a KilnError, keeping the original as `cause`. */
export function asKilnError(err: unknown, code = 'INTERNAL'): KilnError {
  if (err instanceof KilnError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new KilnError(code, message, { cause: err });
}
