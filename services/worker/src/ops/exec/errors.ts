import { KilnError, registerErrorClass } from '@kiln/protocol';
import type { ErrorDetails, KilnErrorOptions } from '@kiln/protocol';

/** A required secret (mount or env) that the session does not provide. `details.id` names it. */
export class SecretNotFoundError extends KilnError {
  declare readonly code: 'SECRET_NOT_FOUND';
  readonly id: string;

  constructor(id: string, opts: KilnErrorOptions = {}) {
    super('SECRET_NOT_FOUND', `secret ${id} not found`, {
      ...opts,
      details: { ...opts.details, id },
    });
    this.id = id;
  }
}

/** A required SSH agent socket that the session does not forward. `details.id` names it. */
export class SshNotFoundError extends KilnError {
  declare readonly code: 'SSH_NOT_FOUND';
  readonly id: string;

  constructor(id: string, opts: KilnErrorOptions = {}) {
    super('SSH_NOT_FOUND', `no SSH key ${JSON.stringify(id)} forwarded from the client`, {
      ...opts,
      details: { ...opts.details, id },
    });
    this.id = id;
  }
}

/** The ExecOp itself is malformed (no args, a mount without its input, an unknown mount type). */
export class ExecOpError extends KilnError {
  declare readonly code: 'EXEC_INVALID_OP';

  constructor(message: string, opts: KilnErrorOptions = {}) {
    super('EXEC_INVALID_OP', message, opts);
  }
}

/**
 * Every instance of a `sharing=private` cache mount is in use on the farm (retryable: one frees
 * when its RUN ends). `details.id` names the cache mount.
 */
export class CacheMountBusyError extends KilnError {
  declare readonly code: 'CACHE_MOUNT_BUSY';

  constructor(id: string, instances: number, opts: KilnErrorOptions = {}) {
    super('CACHE_MOUNT_BUSY', `all ${instances} instances of cache mount ${id} are in use`, {
      retryable: true,
      ...opts,
      details: { ...opts.details, id, instances: String(instances) },
    });
  }
}

registerErrorClass(
  'CACHE_MOUNT_BUSY',
  (_m, d, r) =>
    new CacheMountBusyError(String(d.id ?? ''), Number(d.instances ?? 0), {
      details: d,
      retryable: r,
    }),
);

/**
 * Revived from the wire with the id in its details; an error whose details were lost on the way
 * (cut to fit a trailer) keeps the message it came with, which names the id, never `secret  not found`.
 */
function revivedWithId<E extends KilnError>(
  make: (id: string, opts: KilnErrorOptions) => E,
): (m: string, d: ErrorDetails, r: boolean) => E {
  return (m, d, r) => {
    const e = make(typeof d.id === 'string' ? d.id : '', { details: d, retryable: r });
    if (typeof d.id !== 'string') e.message = m;
    return e;
  };
}

registerErrorClass(
  'SECRET_NOT_FOUND',
  revivedWithId((id, o) => new SecretNotFoundError(id, o)),
);
registerErrorClass(
  'SSH_NOT_FOUND',
  revivedWithId((id, o) => new SshNotFoundError(id, o)),
);
registerErrorClass(
  'EXEC_INVALID_OP',
  (m, d, r) => new ExecOpError(m, { details: d, retryable: r }),
);
