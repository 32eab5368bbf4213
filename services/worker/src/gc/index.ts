export { WorkerGc } from './worker-gc.js';
export type { PruneOptions, WorkerGcOptions } from './worker-gc.js';
export { GcResponder } from './gc-responder.js';
export { UsageLog } from './usage-log.js';
export type { Usage } from './usage-log.js';
export { FilterInvalidError, compileFilters } from './filters.js';
export {
  DEFAULT_GC_GRACE_MS,
  DEFAULT_GC_INTERVAL_MS,
  DEFAULT_GC_KEEP_DURATION_MS,
  defaultKeepBytes,
} from './policy.js';
export type { GcConfig } from './policy.js';
