/** Tasks: the worker's consumer of the task bus, and a trivial executor for dispatch tests. */
export { TaskConsumer, defaultWorkerId } from './task-consumer.js';
export type {
  ConsumerEvent,
  ProgressUpdate,
  RunTask,
  TaskConsumerOptions,
  TaskOutcome,
} from './task-consumer.js';
export { sleepExecutor, SLEEP_MS, FAIL, OUTPUT } from './sleep-executor.js';
