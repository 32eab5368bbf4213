export { runExec, sweepExecState } from './exec.js';
export type { ExecEnv, ExecResult, RunExecOptions, SecretProvider, SshProvider } from './exec.js';
export { CacheMounts } from './cache-mounts.js';
export type {
  CacheMountHandle,
  CacheMountProvider,
  CacheMountRequest,
  CacheSharing,
  LocalCacheMountHandle,
} from './cache-mounts.js';
export { FarmCacheMounts } from './farm-cache-mounts.js';
export type { FarmCacheMountsOptions } from './farm-cache-mounts.js';
export {
  CacheMountBusyError,
  ExecOpError,
  SecretNotFoundError,
  SshNotFoundError,
} from './errors.js';
// The exec engine's building blocks, public through this entry: snapshots and the OCI runtime.
export * from '../../snapshot/index.js';
export * from '../../runtime/index.js';
