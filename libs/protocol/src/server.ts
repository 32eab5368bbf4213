/**
 * @kiln/protocol/server: what a grpc-js server of Kiln's protocol needs beyond the wire formats.
 * Apart from the main entry so that clients, which do not use grpc-js, do not load it.
 */
import { Metadata } from '@grpc/grpc-js';
import type { StatusObject, status } from '@grpc/grpc-js';
import { ERROR_TRAILER, errorStatus } from './grpc-status.js';

/** Converts anything thrown into the status object a grpc-js handler passes to its callback. */
export function toGrpcStatus(thrown: unknown): Partial<StatusObject> & { code: status } {
  const { code, details, trailer } = errorStatus(thrown);
  const metadata = new Metadata();
  metadata.set(ERROR_TRAILER, trailer);
  return { code, details, metadata };
}
