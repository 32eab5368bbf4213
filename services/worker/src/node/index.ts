/** The worker process: real LLB ops as tasks from the task bus. */
export { TaskRunner, taskErrorOf } from './task-runner.js';
export type { RunnerStats, TaskRunnerOptions } from './task-runner.js';
export { WorkerNode } from './worker-node.js';
export { SessionRelay } from './session-relay.js';
export type { SessionRelayOptions, TaskClaim, TaskSession } from './session-relay.js';
export { openStore } from '@kiln/store';
export type { WorkerNodeOptions } from './worker-node.js';
export { ChecksumResponder } from './checksum-responder.js';
export type { ChecksumResponderOptions, HeldSnapshots } from './checksum-responder.js';
export { defaultSlots, loadConfig, FLAGS_HELP } from './config.js';
export type { LoadConfigOptions, StoreConfig, WorkerConfig, WorkerConfigInput } from './config.js';
export { CGROUP_ROOT_ENV, delegateCgroup } from './user-namespace.js';
export { binfmtRegistered, nativePlatform, resolvePlatforms } from './platforms.js';
export { EMPTY_RESULT_ID, chainIds, layerSnapshotName, resultIdOf } from './result-id.js';
export {
  InputUnavailableError,
  InvalidTaskError,
  SessionUnavailableError,
  WorkerConfigError,
} from './errors.js';
