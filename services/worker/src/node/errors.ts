/** Typed errors of the worker process (stable codes; see the worker README). */
import { INPUT_LOST_CODE } from '@kiln/bus';
import { KilnError } from '@kiln/protocol';

/**
 * The op needs something only the client's build session can give (a secret, an ssh agent, a
 * local directory) and its build has no session. Not retryable: another attempt on any worker
 * fails the same way.
 */
export class SessionUnavailableError extends KilnError {
  constructor(what: 'secret' | 'ssh' | 'local', id: string) {
    super(
      'SESSION_UNAVAILABLE',
      `${what} "${id}" needs the client's build session, and this build has none`,
      { details: { what, id } },
    );
  }
}

/** A task input could not be materialized (not held here, and no layers to fetch). */
export class InputUnavailableError extends KilnError {
  constructor(index: number, resultId: string, why: string, cause?: unknown) {
    super('TASK_INPUT_UNAVAILABLE', `input ${index} (${resultId || 'no result id'}): ${why}`, {
      cause,
      // Another worker (the holder) may still have it, or the store may be back.
      retryable: true,
      details: { index, resultId },
    });
  }
}

/**
 * An input has no blob yet and its holder is gone, did not answer, or no longer has it. Not
 * retryable here (another attempt would ask the same holder): the scheduler reruns the vertex
 * that made the input (details `resultId`) and then this task.
 */
export class InputLostError extends KilnError {
  constructor(index: number, resultId: string, holder: string, why: string, cause?: unknown) {
    super(
      INPUT_LOST_CODE,
      `input ${index} (${resultId}) is lost: ${why}${holder ? ` (holder ${holder})` : ''}`,
      { cause, details: { index, resultId, holder } },
    );
  }
}

/** The task itself is unusable (undecodable op, an op kind this worker does not run). */
export class InvalidTaskError extends KilnError {
  constructor(message: string, cause?: unknown) {
    super('TASK_INVALID', message, { cause });
  }
}

/** The worker's configuration is invalid. */
export class WorkerConfigError extends KilnError {
  constructor(message: string, cause?: unknown) {
    super('WORKER_CONFIG', message, { cause });
  }
}
