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

registerErrorClass('DISPATCH_CANCELLED', (m, d) => new TaskCancelledError(m, d));
registerErrorClass('DISPATCH_CLOSED', () => new DispatcherClosedError());
