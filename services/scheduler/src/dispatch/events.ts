/** Typed events of the dispatcher (it does not log; the service's logger subscribes). */
import type { Placement } from '@kiln/bus';

export type DispatchEvent =
  | {
      type: 'dispatched';
      taskId: string;
      cacheKey: string;
      attempt: number;
      placement: Placement;
      worker?: string;
    }
  | { type: 'offer-declined'; taskId: string; worker: string; reason: string }
  | {
      type: 'redispatched';
      taskId: string;
      attempt: number;
      reason: 'holder-lost' | 'retry' | 'adopted' | 'released';
    }
  | { type: 'completed'; taskId: string; worker: string; attempt: number }
  /** A step fused into another task got its own done record (`Dispatcher.adopt`). */
  | { type: 'adopted'; taskId: string; cacheKey: string; worker: string }
  | { type: 'failed'; taskId: string; code: string; attempts: number }
  /** A done task's result was lost with its holder: the next submit of its key reruns it. */
  | { type: 'result-lost'; taskId: string; worker: string }
  /**
   * A worker's record request was not applied: not the holder of the current attempt (stale,
   * or another worker's task), or malformed.
   */
  | { type: 'record-refused'; workerId: string; op: string; key: string; reason: string }
  | { type: 'stale-message-deleted'; seq: number; consumer: string }
  /** A cancelled task's message was taken off its queue before any worker pulled it. */
  | { type: 'task-withdrawn'; taskId: string; seq: number }
  /** A queued attempt's queue message was lost: published again. */
  | { type: 'task-requeued'; taskId: string; seq: number }
  | { type: 'error'; where: string; error: unknown };
