import { registerErrorClass } from '@kiln/protocol';
import { DockerfileError } from './dockerfile-error.js';

/** The stable code of a Dockerfile that exceeds one of the frontend's bounds. */
export const DOCKERFILE_LIMIT_EXCEEDED = 'DOCKERFILE_LIMIT_EXCEEDED';

/**
 * Bounds on the work the frontend does for one Dockerfile (one conversion per platform). BuildKit's
 * lexer has none; a farm's scheduler must, or 20 × `ARG A=${A}${A}` takes gigabytes from every
 * build it serves. Lengths are in UTF-16 code units (a JavaScript string's length).
 */
export interface FrontendLimits {
  /** The Dockerfile's size in bytes. */
  maxDockerfileBytes: number;
  /** Instructions in the Dockerfile (after line continuations). */
  maxInstructions: number;
  /** Stages (`FROM`s). */
  maxStages: number;
  /** The length of one expanded word or variable. */
  maxWordLength: number;
  /** The length of all the words one conversion expands, together. */
  maxExpandedLength: number;
  /** The time one conversion may take, checked at every expansion and instruction (ms). */
  maxMillis: number;
  /** The marshaled Definition of one platform, in bytes. */
  maxDefinitionBytes: number;
}

export const DEFAULT_FRONTEND_LIMITS: Readonly<FrontendLimits> = Object.freeze({
  maxDockerfileBytes: 4 * 1024 * 1024,
  maxInstructions: 10_000,
  maxStages: 1_000,
  maxWordLength: 1024 * 1024,
  maxExpandedLength: 32 * 1024 * 1024,
  maxMillis: 60_000,
  maxDefinitionBytes: 16 * 1024 * 1024,
});

/** The bounds with the caller's overrides; a typed error for one that is not a positive number. */
export function frontendLimits(overrides: Partial<FrontendLimits> = {}): FrontendLimits {
  const out = { ...DEFAULT_FRONTEND_LIMITS };
  for (const [k, v] of Object.entries(overrides)) {
    if (v === undefined) continue;
    if (!(k in out) || typeof v !== 'number' || !(v > 0)) {
      throw new DockerfileError(`invalid frontend limit ${k}: ${String(v)}`, { startLine: 0 });
    }
    out[k as keyof FrontendLimits] = v;
  }
  return out;
}

/**
 * A Dockerfile beyond one of the frontend's bounds. `limit` names the bound (a FrontendLimits
 * key) and `max` its value; the lines are the instruction's when there is one (0 otherwise).
 */
export class DockerfileLimitError extends DockerfileError {
  readonly limit: string;
  readonly max: number;

  constructor(
    message: string,
    opts: { limit: string; max: number; startLine?: number; endLine?: number; cause?: unknown },
  ) {
    super(message, {
      startLine: opts.startLine ?? 0,
      ...(opts.endLine === undefined ? {} : { endLine: opts.endLine }),
      cause: opts.cause,
      code: DOCKERFILE_LIMIT_EXCEEDED,
      details: { limit: opts.limit, max: opts.max },
    });
    this.limit = opts.limit;
    this.max = opts.max;
  }

  /** The same error at an instruction's lines (the lexer knows none). */
  at(loc: { startLine: number; endLine: number }): DockerfileLimitError {
    if (this.startLine !== 0) return this;
    return new DockerfileLimitError(this.message, {
      limit: this.limit,
      max: this.max,
      startLine: loc.startLine,
      endLine: loc.endLine,
      cause: this.cause,
    });
  }
}

registerErrorClass(DOCKERFILE_LIMIT_EXCEEDED, (message, details) => {
  const startLine = typeof details.startLine === 'number' ? details.startLine : 0;
  const endLine = typeof details.endLine === 'number' ? details.endLine : startLine;
  return new DockerfileLimitError(message, {
    limit: String(details.limit ?? ''),
    max: typeof details.max === 'number' ? details.max : 0,
    startLine,
    endLine,
  });
});

/** A word longer than `max` after expansion. */
export function wordTooLong(max: number): DockerfileLimitError {
  return new DockerfileLimitError(
    `an expanded word is longer than ${max} characters (the frontend's maxWordLength)`,
    { limit: 'maxWordLength', max },
  );
}

/** A Definition beyond maxDefinitionBytes; `size` when it is known (after marshaling). */
export function definitionTooLarge(limits: FrontendLimits, size?: number): DockerfileLimitError {
  const max = limits.maxDefinitionBytes;
  return new DockerfileLimitError(
    `the Dockerfile's LLB Definition is ${size === undefined ? 'more' : `${size} bytes, more`} than ${max} bytes (the frontend's maxDefinitionBytes)`,
    { limit: 'maxDefinitionBytes', max },
  );
}

/**
 * The work one conversion may still do: expanded length and time. Shared by every lexer of the
 * conversion; not safe to share between conversions.
 */
export class ExpansionBudget {
  readonly limits: FrontendLimits;
  #expanded = 0;
  #definition = 0;
  readonly #deadline: number;

  constructor(limits: FrontendLimits = frontendLimits()) {
    this.limits = limits;
    this.#deadline = performance.now() + limits.maxMillis;
  }

  get maxWordLength(): number {
    return this.limits.maxWordLength;
  }

  /** Counts `n` more expanded characters; throws once the total or the time is past its bound. */
  charge(n: number): void {
    this.#expanded += n;
    if (this.#expanded > this.limits.maxExpandedLength) {
      const max = this.limits.maxExpandedLength;
      throw new DockerfileLimitError(
        `the Dockerfile's expanded words are longer than ${max} characters together (the frontend's maxExpandedLength)`,
        { limit: 'maxExpandedLength', max },
      );
    }
    this.checkTime();
  }

  /** Counts `n` more bytes the Definition will hold; throws past maxDefinitionBytes. */
  chargeDefinition(n: number): void {
    this.#definition += n;
    if (this.#definition > this.limits.maxDefinitionBytes) throw definitionTooLarge(this.limits);
  }

  /** Throws once the conversion has taken longer than its bound. */
  checkTime(): void {
    if (performance.now() > this.#deadline) {
      const max = this.limits.maxMillis;
      throw new DockerfileLimitError(
        `converting the Dockerfile took longer than ${max} ms (the frontend's maxMillis)`,
        { limit: 'maxMillis', max },
      );
    }
  }
}
