/** Progress events a worker publishes while it runs a task (core NATS, best effort). */

export interface TaskProgress {
  taskId: string;
  attemptToken: string;
  workerId: string;
  /** The fused step (`Task.chain`) the event is about, by vertex digest; absent: the task's op. */
  vertex?: string;
  /** Free-form stage name (`pull`, `exec`, `upload`...). */
  stage?: string;
  /** Log lines, if any. */
  lines?: string[];
  current?: number;
  total?: number;
  at: number;
}
