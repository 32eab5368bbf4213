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

/** Which limit a task exceeded. */
export type LimitName = 'memory' | 'pids' | 'time';

/**
 * A process was stopped by one of its task's limits (see `TaskLimits`): OOM-killed at the memory
 * limit, failed after forks were refused at the pids limit, or killed at the time limit.
 * `details`: `limit`, `value` (bytes, processes or milliseconds), `exitCode`, `tail` and, once the
 * task runner adds it, `vertex` (the vertex digest) and `vertexName`.
 */
export class LimitExceededError extends KilnError {
  declare readonly code: 'TASK_LIMIT_EXCEEDED';
  readonly limit: LimitName;
  readonly value: number;

  constructor(limit: LimitName, value: number, message: string, opts: KilnErrorOptions = {}) {
    super('TASK_LIMIT_EXCEEDED', message, {
      ...opts,
      details: { ...opts.details, limit, value },
    });
    this.limit = limit;
    this.value = value;
  }

  /** The same error naming the vertex that ran the process. */
  forVertex(digest: string, name: string | undefined): LimitExceededError {
    const what = name !== undefined && name !== '' ? `${JSON.stringify(name)} (${digest})` : digest;
    return new LimitExceededError(this.limit, this.value, `vertex ${what}: ${this.message}`, {
      cause: this,
      details: { ...this.details, vertex: digest, ...(name ? { vertexName: name } : {}) },
    });
  }
}

registerErrorClass('TASK_LIMIT_EXCEEDED', (m, d, r) => {
  const limit = (['memory', 'pids', 'time'] as const).find((l) => l === d.limit) ?? 'time';
  const value = typeof d.value === 'number' ? d.value : Number(d.value ?? 0);
  return new LimitExceededError(limit, value, m, { details: d, retryable: r });
});
