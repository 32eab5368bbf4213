export { OciRuntime } from './oci-runtime.js';
export type { OciRuntimeOptions, RuntimeName } from './oci-runtime.js';
export { ExecError, LimitExceededError, RuntimeError, RuntimeErrorCode } from './errors.js';
export type { LimitName } from './errors.js';
export { TaskCgroups, capLimits } from './cgroups.js';
export type { CgroupEvents, TaskLimits } from './cgroups.js';
export { seccompFor } from './seccomp.js';
export { SECCOMP_BPF_ANNOTATION, SeccompBpfCache } from './seccomp-bpf.js';
export type { DockerSeccompProfile, OciSeccomp } from './seccomp.js';
export { DEFAULT_HOSTNAME, DEFAULT_PATH, hostsFile, resolvConf } from './hosts.js';
export {
  ALL_CAPABILITIES,
  DEFAULT_CAPABILITIES,
  boundingCapabilities,
  generateSpec,
  seccompOf,
  withDefaultPath,
} from './spec.js';
export type { OciSpec, OciMount } from './spec.js';
export { resolveUser } from './user.js';
export type { ResolvedUser } from './user.js';
export { mountStubsCleaner } from './mount-stubs.js';
export type {
  ContainerMount,
  HostEntry,
  NetworkMode,
  OutputStream,
  ProcessSpec,
  RunOptions,
  RunResult,
  RunSpec,
  SecurityMode,
  Ulimit,
} from './types.js';
