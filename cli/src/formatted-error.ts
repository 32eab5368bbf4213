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
