/** Which failures a client sends again, to the same scheduler or the next one. */
import { ERROR_TRAILER, GrpcStatus, KilnError, fromGrpcError } from '@kiln/protocol';
import type { ServiceError } from './grpc-h2.js';

export { CLIENT_KEY_HEADER, INCARNATION_HEADER, RESEND_HEADER } from '@kiln/protocol';

const RETRYABLE = new Set<number>([
  GrpcStatus.UNAVAILABLE,
  GrpcStatus.INTERNAL,
  GrpcStatus.UNKNOWN,
]);

/**
 * Whether a failed call may be sent again (to the same or another scheduler): a broken transport
 * (no typed error from a scheduler), or a typed error the scheduler marks retryable
 * (`SCHEDULER_UNAVAILABLE` from one shutting down).
 */
export function isRetryable(e: unknown): boolean {
  if (e instanceof KilnError) return e.retryable && e.code !== 'CANCELED';
  const se = e as Partial<ServiceError>;
  const fromServer = (se.metadata?.get(ERROR_TRAILER).length ?? 0) > 0;
  if (fromServer) return fromGrpcError(e).retryable;
  return se.code !== undefined && RETRYABLE.has(se.code);
}
