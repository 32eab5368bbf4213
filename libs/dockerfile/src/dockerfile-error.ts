import { KilnError, registerErrorClass } from '@kiln/protocol';

/** The stable code of every Dockerfile parse failure. */
export const DOCKERFILE_PARSE = 'DOCKERFILE_PARSE';

export interface DockerfileErrorOptions {
  /** First offending line, 1-based as BuildKit counts them (see `parse` for the quirks). */
  startLine: number;
  /** Last offending line; never below `startLine`. */
  endLine?: number;
  cause?: unknown;
  /** @internal a subclass's own code (DOCKERFILE_PARSE by default). */
  code?: string;
  /** @internal a subclass's own details, beside the lines. */
  details?: Record<string, string | number | boolean>;
}

/**
 * A Dockerfile that cannot be parsed. Carries the offending line range, also in `details` so that
 * it survives the wire (the client points at the exact lines, as `docker build` does).
 */
export class DockerfileError extends KilnError {
  readonly startLine: number;
  readonly endLine: number;

  constructor(message: string, opts: DockerfileErrorOptions) {
    const startLine = opts.startLine;
    // BuildKit's toRanges: an end before the start means a single line.
    const endLine =
      opts.endLine === undefined || opts.endLine <= startLine ? startLine : opts.endLine;
    super(opts.code ?? DOCKERFILE_PARSE, message, {
      cause: opts.cause,
      details: { ...opts.details, startLine, endLine },
    });
    this.startLine = startLine;
    this.endLine = endLine;
  }
}

registerErrorClass(DOCKERFILE_PARSE, (message, details) => {
  const startLine = typeof details.startLine === 'number' ? details.startLine : 0;
  const endLine = typeof details.endLine === 'number' ? details.endLine : startLine;
  return new DockerfileError(message, { startLine, endLine });
});
