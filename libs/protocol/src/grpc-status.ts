/**
 * The one place where typed errors become gRPC statuses and back. The status code is chosen from
 * the error (see {@link grpcCodeFor}); the full error (code, message, retryable, details) travels
 * as a binary `kiln.errors.v1.ErrorDetail` in the trailer `kiln-error-bin`, so the client rebuilds
 * the same class with {@link fromGrpcError}. No grpc-js here: the client (libs/client) speaks
 * gRPC without it; the server's side, which makes grpc-js metadata, is `@kiln/protocol/server`.
 */
import { kiln } from './gen/protocol.js';
import { KilnError, asKilnError, reviveError } from './errors.js';
import type { ErrorDetails } from './errors.js';
import { truncateMiddle } from './truncate.js';

const ErrorDetail = kiln.errors.v1.ErrorDetail;

/** gRPC's status codes (the numbers of grpc-js's `status` enum, fixed by the gRPC spec). */
export const GrpcStatus = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;
export type GrpcStatusCode = (typeof GrpcStatus)[keyof typeof GrpcStatus];
const GrpcCode = GrpcStatus;
type GrpcCode = GrpcStatusCode;
const CODE_NAMES = Object.fromEntries(Object.entries(GrpcStatus).map(([k, v]) => [v, k])) as Record<
  number,
  string
>;

export const ERROR_TRAILER = 'kiln-error-bin';

/**
 * The metadata key of a scheduler's incarnation (a random id per process): the scheduler sends it
 * with Status's headers, a resuming client sends back the one that numbered its `sinceSeq`; a
 * `sinceSeq` of another incarnation (a scheduler that died, whose frame numbers mean nothing here)
 * is read as 0.
 */
export const INCARNATION_HEADER = 'kiln-scheduler-incarnation';

/**
 * The metadata key marking a Solve its client sends again after the first call broke: the
 * client has given up the first call, so a build of that ref still running for it is cancelled
 * and started afresh (the scheduler answers a retryable `BUILD_EXISTS` until the old one ends).
 */
export const RESEND_HEADER = 'kiln-solve-resend';

/**
 * The metadata key of a client's key: a random secret each client (a `KilnClient`) draws once and
 * sends with its Session and Solve calls. A session serves the Solves that carry the key its
 * stream was opened with, over any connection (a stream reopened through a new connection, or on
 * another scheduler, is the same client's); without a key, only Solves of the connection that
 * opened it.
 */
export const CLIENT_KEY_HEADER = 'kiln-client-key';

/**
 * Bounds on an error in trailers: gRPC clients refuse metadata above 8 KiB by default (grpc-js's
 * `grpc.max_metadata_size`), and a refused trailer loses the whole error. The message travels
 * twice (`grpc-message` and, base64, in {@link ERROR_TRAILER}): both together stay near 7 KiB.
 * What is cut is marked (truncate.ts).
 */
export const MAX_ERROR_MESSAGE = 4000;
export const MAX_STATUS_MESSAGE = 1000;
export const MAX_ERROR_DETAIL = 200;

/** Explicit status codes for well-known error codes; others follow the suffix rules below. */
const explicit = new Map<string, GrpcCode>([
  ['CANCELED', GrpcCode.CANCELLED],
  ['DEADLINE_EXCEEDED', GrpcCode.DEADLINE_EXCEEDED],
  ['UNAUTHENTICATED', GrpcCode.UNAUTHENTICATED],
  ['PERMISSION_DENIED', GrpcCode.PERMISSION_DENIED],
  ['ENTITLEMENT_DENIED', GrpcCode.PERMISSION_DENIED],
  ['INTERNAL', GrpcCode.INTERNAL],
]);

/** The gRPC status code for a typed error. */
export function grpcCodeFor(err: KilnError): GrpcCode {
  const c = explicit.get(err.code);
  if (c !== undefined) return c;
  if (err.code.endsWith('_NOT_FOUND')) return GrpcCode.NOT_FOUND;
  if (err.code.endsWith('_EXISTS')) return GrpcCode.ALREADY_EXISTS;
  if (err.code.endsWith('_UNAVAILABLE') || err.retryable) return GrpcCode.UNAVAILABLE;
  if (err.code.endsWith('_CANCELED')) return GrpcCode.CANCELLED;
  if (
    err.code.startsWith('LLB_') ||
    err.code.startsWith('DOCKERFILE_') ||
    err.code.endsWith('_INVALID')
  )
    return GrpcCode.INVALID_ARGUMENT;
  return GrpcCode.UNKNOWN;
}

function encodeDetails(details: ErrorDetails): Record<string, kiln.errors.v1.IDetailValue> {
  const out: Record<string, kiln.errors.v1.IDetailValue> = {};
  for (const [k, v] of Object.entries(details)) {
    if (v === undefined) continue;
    if (typeof v === 'string') out[k] = { str: truncateMiddle(v, MAX_ERROR_DETAIL) };
    else if (typeof v === 'number') out[k] = { num: v };
    else out[k] = { flag: v };
  }
  return out;
}

function decodeDetails(
  d: Record<string, kiln.errors.v1.IDetailValue> | null | undefined,
): ErrorDetails {
  const out: ErrorDetails = {};
  for (const [k, v] of Object.entries(d ?? {})) {
    if (v.str != null) out[k] = v.str;
    else if (v.num != null) out[k] = v.num;
    else if (v.flag != null) out[k] = v.flag;
  }
  return out;
}

/**
 * What a failed call's status carries for anything thrown: the status code, the `grpc-message`
 * text, and the {@link ERROR_TRAILER} bytes (a server puts them in its trailers: see
 * `toGrpcStatus` in `@kiln/protocol/server`).
 */
export function errorStatus(thrown: unknown): { code: GrpcCode; details: string; trailer: Buffer } {
  const err = asKilnError(thrown);
  const message = truncateMiddle(err.message, MAX_ERROR_MESSAGE);
  const bytes = ErrorDetail.encode({
    code: err.code,
    message,
    retryable: err.retryable,
    details: encodeDetails(err.details),
  }).finish();
  return {
    code: grpcCodeFor(err),
    details: truncateMiddle(err.message, MAX_STATUS_MESSAGE),
    trailer: Buffer.from(bytes),
  };
}

/** A failed call as gRPC clients (grpc-js's, libs/client's) give it. */
interface FailedCall {
  code: number;
  details: string;
  metadata: { get(key: string): unknown[] };
}

/** Rebuilds the typed error from a failed call; errors without Kiln details keep their status. */
export function fromGrpcError(e: unknown): KilnError {
  const se = e as Partial<FailedCall>;
  const raw =
    typeof se.metadata?.get === 'function' ? se.metadata.get(ERROR_TRAILER)[0] : undefined;
  if (raw instanceof Buffer) {
    try {
      const d = ErrorDetail.decode(raw);
      return reviveError(d.code, d.message, decodeDetails(d.details), d.retryable);
    } catch (cause) {
      return new KilnError('INTERNAL', `undecodable error detail: ${se.details ?? ''}`, { cause });
    }
  }
  const code = typeof se.code === 'number' ? se.code : GrpcCode.UNKNOWN;
  const name = CODE_NAMES[code] ?? 'UNKNOWN';
  return new KilnError(name === 'CANCELLED' ? 'CANCELED' : name, se.details ?? String(e), {
    cause: e,
    retryable: code === GrpcCode.UNAVAILABLE,
  });
}
