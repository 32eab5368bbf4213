import { KilnError, registerErrorClass } from '@kiln/protocol';
import type { KilnErrorOptions } from '@kiln/protocol';

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

registerErrorClass(
  'SECRET_NOT_FOUND',
  (_m, d, r) => new SecretNotFoundError(String(d.id ?? ''), { details: d, retryable: r }),
);
registerErrorClass(
  'SSH_NOT_FOUND',
  (_m, d, r) => new SshNotFoundError(String(d.id ?? ''), { details: d, retryable: r }),
);
registerErrorClass(
  'EXEC_INVALID_OP',
  (m, d, r) => new ExecOpError(m, { details: d, retryable: r }),
);
