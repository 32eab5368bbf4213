/** Typed dispatch errors (stable codes, registered for the wire). */
import { KilnError, registerErrorClass } from '@kiln/protocol';
import type { ErrorDetails } from '@kiln/protocol';

/** A task failed for good: its attempts are exhausted or its error is not retryable. */
export class TaskFailedError extends KilnError {
  constructor(
    message: string,
    details: ErrorDetails,
    opts: { cause?: unknown; code?: string } = {},
  ) {
    super(opts.code ?? 'DISPATCH_TASK_FAILED', message, { details, cause: opts.cause });
  }
}

/** The build stopped waiting (cancel, abort signal) or the task record was cancelled. */
export class TaskCancelledError extends KilnError {
  constructor(message: string, details: ErrorDetails = {}) {
    super('DISPATCH_CANCELLED', message, { details });
  }
}

/** No live worker supports the task's platform (natively or through emulation). */
export class NoWorkerError extends KilnError {
  constructor(platform: string, waitedMs: number) {
    super('DISPATCH_NO_WORKER', `no worker for platform ${platform} (waited ${waitedMs} ms)`, {
      details: { platform, waitedMs },
      retryable: true,
    });
  }
}

/** The dispatcher was closed while the task was pending; a new dispatcher can pick it up. */
export class DispatcherClosedError extends KilnError {
  constructor() {
    super('DISPATCH_CLOSED', 'dispatcher closed before the task finished', { retryable: true });
  }
}

/**
 * A task whose record would not fit in one message of the bus (NATS's max_payload): never retried,
 * the same task cannot fit later. Mostly large inline data in an op (a FileOp's mkfile).
 */
export class TaskTooLargeError extends KilnError {
  constructor(size: number, max: number, cacheKey: string) {
    super(
      'DISPATCH_TASK_TOO_LARGE',
      `the task is ${size} bytes, its record more than the bus's max payload of ${max} bytes (nats-server max_payload); make the op smaller (inline file data, names)`,
      { details: { size, max, cacheKey } },
    );
  }
}

registerErrorClass('DISPATCH_CANCELLED', (m, d) => new TaskCancelledError(m, d));
registerErrorClass('DISPATCH_CLOSED', () => new DispatcherClosedError());
