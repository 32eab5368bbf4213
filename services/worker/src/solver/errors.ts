import { KilnError, asKilnError, registerErrorClass } from '@kiln/protocol';

/**
 * A vertex failed. Keeps the failing op's own error as `cause` and its code (EXEC_FAILED,
 * FILEOP_NOT_FOUND, ...), and names the vertex (digest and display name) so the client can point
 * at it (and, through the Dockerfile frontend's source map, at the Dockerfile line).
 */
export class VertexError extends KilnError {
  readonly digest: string;
  readonly vertexName: string;

  constructor(digest: string, vertexName: string, cause: unknown) {
    const inner = asKilnError(cause, 'VERTEX_FAILED');
    super(inner.code, `${vertexName}: ${inner.message}`, {
      cause,
      retryable: inner.retryable,
      details: { ...inner.details, digest, vertex: vertexName },
    });
    this.digest = digest;
    this.vertexName = vertexName;
  }
}

export class SolveCanceledError extends KilnError {
  constructor(cause?: unknown) {
    super('CANCELED', 'build canceled', { cause });
  }
}
registerErrorClass('CANCELED', (m) => new KilnError('CANCELED', m));
