/** Dispatch: tasks to workers over the task bus (`@kiln/bus`), deduplicated, placed and fenced. */
export { Dispatcher } from './dispatcher.js';
export type { DispatcherOptions, SubmitOptions } from './dispatcher.js';
export type { DispatchEvent } from './events.js';
export { planPlacement } from './placement.js';
export type { PlacementPlan } from './placement.js';
export { WorkerTable } from './worker-table.js';
export {
  DispatcherClosedError,
  NoWorkerError,
  TaskCancelledError,
  TaskFailedError,
} from './errors.js';
