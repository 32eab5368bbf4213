/** Typed solve errors (stable codes, registered for the wire). */
import { KilnError, asKilnError, registerErrorClass } from '@kiln/protocol';

/**
 * A vertex failed: the build fails with it. Keeps the task's own code, message and `retryable`
 * (so a client can tell an exec failure from a lost worker), and adds the vertex digest and name
 * to the details (`digest`, `vertex`) as BuildKit's vertex errors carry them.
 */
export class VertexFailedError extends KilnError {
  constructor(digest: string, vertexName: string, cause: unknown) {
    const inner = asKilnError(cause, 'VERTEX_FAILED');
    super(inner.code, `${vertexName}: ${inner.message}`, {
      cause,
      retryable: inner.retryable,
      details: { ...inner.details, digest, vertex: vertexName },
    });
  }
}

/** The build was cancelled (Cancel, or the client that solved it went away). */
export class BuildCanceledError extends KilnError {
  constructor(buildId: string, reason = 'cancelled') {
    super('BUILD_CANCELED', `build ${buildId} ${reason}`, { details: { buildId } });
  }
}

/** A build with this id is already running. */
export class BuildExistsError extends KilnError {
  /** `retryable`: the build is ending (its client left); a Solve of the id will start it anew. */
  constructor(buildId: string, retryable = false) {
    super('BUILD_EXISTS', `build ${buildId} is already running`, {
      details: { buildId },
      retryable,
    });
  }
}

/** No build with this id is known (never started, or forgotten after its retention). */
export class BuildNotFoundError extends KilnError {
  constructor(buildId: string) {
    super('BUILD_NOT_FOUND', `build ${buildId} not found`, { details: { buildId } });
  }
}

/** A request the scheduler cannot run (no definition, unknown frontend, missing input). */
export class SolveRequestInvalidError extends KilnError {
  constructor(message: string, details: Record<string, string> = {}) {
    super('SOLVE_REQUEST_INVALID', message, { details });
  }
}

registerErrorClass(
  'BUILD_CANCELED',
  (_m, d) => new BuildCanceledError(String(d.buildId ?? ''), 'cancelled'),
);
registerErrorClass(
  'BUILD_EXISTS',
  (_m, d, retryable) => new BuildExistsError(String(d.buildId ?? ''), retryable),
);
registerErrorClass('BUILD_NOT_FOUND', (_m, d) => new BuildNotFoundError(String(d.buildId ?? '')));
registerErrorClass(
  'SOLVE_REQUEST_INVALID',
  (m, d) => new SolveRequestInvalidError(m, d as Record<string, string>),
);

/**
 * A Solve's Definition above the scheduler's bound (`maxDefinitionBytes` of its frontend limits):
 * refused before it is parsed; a Dockerfile's own Definition fails in the frontend instead.
 */
export class DefinitionTooLargeError extends KilnError {
  constructor(size: number, max: number) {
    super(
      'DEFINITION_TOO_LARGE',
      `the build's LLB Definition is ${size} bytes, more than the scheduler's ${max} (maxDefinitionBytes of --frontend-limits)`,
      { details: { size, max } },
    );
  }
}
