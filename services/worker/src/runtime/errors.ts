import { KilnError, registerErrorClass } from '@kiln/protocol';
import type { KilnErrorOptions } from '@kiln/protocol';

/**
 * A process in a container exited with a code that is not valid (non-zero by default), or was killed.
 * `tail` holds the last lines of its combined output; `exitCode` is 128+signal for a signal.
 */
export class ExecError extends KilnError {
  declare readonly code: 'EXEC_FAILED';
  readonly exitCode: number;
  readonly tail: string;

  constructor(message: string, exitCode: number, tail: string, opts: KilnErrorOptions = {}) {
    super('EXEC_FAILED', message, { ...opts, details: { ...opts.details, exitCode, tail } });
    this.exitCode = exitCode;
    this.tail = tail;
  }
}

registerErrorClass('EXEC_FAILED', (m, d, r) => {
  const exitCode = typeof d.exitCode === 'number' ? d.exitCode : -1;
  const tail = typeof d.tail === 'string' ? d.tail : '';
  return new ExecError(m, exitCode, tail, { details: d, retryable: r });
});

/** Stable codes of {@link RuntimeError}. */
export const RuntimeErrorCode = {
  /** The OCI runtime could not start the container (bad spec, missing executable, mount failure). */
  StartFailed: 'RUNTIME_START_FAILED',
  /** No usable OCI runtime on this machine. */
  Unavailable: 'RUNTIME_UNAVAILABLE',
  /** The user could not be resolved against the rootfs' /etc/passwd and /etc/group. */
  UserNotFound: 'RUNTIME_USER_NOT_FOUND',
  /** The run was aborted (signal or timeout); the container was killed and removed. */
  Aborted: 'RUNTIME_ABORTED',
  /** Preparing the bundle or cleaning up failed. */
  Io: 'RUNTIME_IO',
} as const;
export type RuntimeErrorCode = (typeof RuntimeErrorCode)[keyof typeof RuntimeErrorCode];

/** The runtime failed around the process (not the process itself: that is {@link ExecError}). */
export class RuntimeError extends KilnError {
  declare readonly code: RuntimeErrorCode;

  constructor(code: RuntimeErrorCode, message: string, opts: KilnErrorOptions = {}) {
    super(code, message, opts);
  }
}

for (const code of Object.values(RuntimeErrorCode)) {
  registerErrorClass(code, (m, d, r) => new RuntimeError(code, m, { details: d, retryable: r }));
}
