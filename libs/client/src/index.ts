/**
 * @kiln/client: connect to a Kiln scheduler (`kiln.control.v1.Control` over gRPC), solve,
 * stream progress with resume, list workers, cancel; a build session serving local directories,
 * secrets, ssh agents and receiving exports.
 */
export { KilnClient } from './kiln-client.js';
export type {
  PruneOptions,
  UsageRecord,
  ConnectOptions,
  SolveRequest,
  SolveResult,
  StatusResponse,
  WorkerRecord,
} from './kiln-client.js';
export { dockerfileInput } from './dockerfile-input.js';
export { BuildSession } from './session.js';
export { INCARNATION_HEADER, isRetryable } from './retry.js';
export type { SessionOptions } from './session.js';
export type { ProgressEvent } from './progress-event.js';
export { localCacheWriter, cacheSolveOptions } from './local-cache.js';
export type { CacheEntry } from './local-cache.js';
