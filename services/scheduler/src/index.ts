/**
 * @kiln/scheduler: the control API server, the distributed solver and the dispatch core. The
 * service entry is `main.ts` (not exported).
 */
export * from './dispatch/index.js';
export { ControlServer } from './control/control-server.js';
export { TenantLimitsInvalidError, parseTenantLimits } from './control/tenant-limits.js';
export type { TenantLimits } from './control/tenant-limits.js';
export type { ControlServerOptions } from './control/control-server.js';
export {
  Authenticator,
  LOCAL_TENANT,
  PermissionDeniedError,
  UnauthenticatedError,
  parseTokens,
} from './control/auth.js';
export type { AuthenticatorOptions, Caller, TenantToken } from './control/auth.js';
export { EntitlementDeniedError } from './control/entitlements.js';
export { TlsFilesProvider } from './control/tls.js';
export type { TlsFiles } from './control/tls.js';
export { BuildRegistry } from './control/builds.js';
export type { Build, BuildRegistryOptions } from './control/builds.js';
export { BuildStatus } from './control/build-status.js';
export { solveGraph, vertexName } from './solver/solve.js';
export type {
  OutputResult,
  SolveOptions,
  SolveResult,
  TaskSubmitter,
  VertexSnapshot,
} from './solver/solve.js';
export { fastKey } from './solver/fast-key.js';
export type { FastKeyInput } from './solver/fast-key.js';
export {
  BuildCanceledError,
  BuildExistsError,
  BuildNotFoundError,
  SolveRequestInvalidError,
  VertexFailedError,
} from './solver/errors.js';
export {
  loadConfig,
  DEFAULT_CONFIG,
  ConfigInvalidError,
  authConfigured,
  isLoopbackListen,
} from './config.js';
export type { SchedulerConfig } from './config.js';
export { registryMetaResolver } from './registry-meta-resolver.js';
export type { RegistryMetaResolverOptions } from './registry-meta-resolver.js';
