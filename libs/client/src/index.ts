/**
 * @kiln/client: connect to a Kiln scheduler (`kiln.control.v1.Control` over gRPC) and build:
 * `client.build({...})` runs a whole build (session, progress, outputs); the lower level is
 * solve, status with resume, the build session (local directories, secrets, ssh agents, exports),
 * workers, cancel. The progress printer is `@kiln/client/progress`.
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
export type {
  BuildOptions,
  BuildResult,
  CacheExport,
  CacheImport,
  Destination,
  DefinitionBuildOptions,
  DockerfileBuildOptions,
  Entitlement,
  Output,
  S3Options,
  SecretSource,
} from './build.js';
export { contextPrefetch, dockerfileInput } from './dockerfile-input.js';
export { BuildSession } from './session.js';
export { solveAndReceive } from './solve-and-receive.js';
export { INCARNATION_HEADER, isRetryable } from './retry.js';
export type { ManifestPatterns, SessionOptions } from './session.js';
export type { ProgressEvent } from './progress-event.js';
export { StatusEvents } from './status-events.js';
export { atomicFileWriter, localDirWriter } from './outputs.js';
export { localCacheWriter, cacheSolveOptions } from './local-cache.js';
export type { CacheEntry } from './local-cache.js';
