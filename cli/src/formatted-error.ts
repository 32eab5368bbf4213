/** An error whose message is already formatted for a person (printed as is, without a prefix). */
export class FormattedError extends Error {
  constructor(
    message: string,
    override readonly cause: unknown,
  ) {
    super(message);
    this.name = 'FormattedError';
  }
}

/** Not an error: the command has said what it had to and exits with `code` (as `systemctl status`). */
export class ExitStatus extends Error {
  constructor(readonly code: number) {
    super(`exit status ${code}`);
    this.name = 'ExitStatus';
  }
}
