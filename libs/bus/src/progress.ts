/** Progress events a worker publishes while it runs a task (core NATS, best effort). */

export interface TaskProgress {
  taskId: string;
  attemptToken: string;
  workerId: string;
  /** Free-form stage name (`pull`, `exec`, `upload`...). */
  stage?: string;
  /** Log lines, if any. */
  lines?: string[];
  current?: number;
  total?: number;
  at: number;
}
