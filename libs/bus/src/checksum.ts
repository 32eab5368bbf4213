/**
 * Content checksums for selector-level cache keys. A vertex that reads an input only through
 * selectors (a COPY source, a read-only mount of a subpath: `depSpecs` in `@kiln/llb`) is keyed by
 * the content checksum of just those paths, as BuildKit does. Only a worker that holds the input's
 * result has the files, so the scheduler asks it:
 *
 * - `kiln.checksum.<workerId>`: core request/reply. Request {@link ChecksumRequest} (a result id
 *   and the dep specs to checksum inside it), reply {@link ChecksumReply}: one entry per spec, in
 *   order (a digest, or the error computing it), or a single error for the whole request (the
 *   worker does not hold that result, the request is malformed). JSON both ways.
 *
 * A digest is the worker's `cache/contenthash` checksum of each selector joined by `,`. Results are immutable, so a digest never changes for
 * a given (result id, spec) and any holder of the id gives the same answer. No reply (or no
 * responders: the worker is gone) means the asker falls back to keying by the result id.
 */
import { KilnError } from '@kiln/protocol';
import { assertWorkerId } from './subjects.js';

export const CHECKSUM_SUBJECT_PREFIX = 'kiln.checksum';

/** The subject a worker answers checksum requests on. */
export function checksumSubject(workerId: string): string {
  return `${CHECKSUM_SUBJECT_PREFIX}.${assertWorkerId(workerId)}`;
}

/** How an input is read (the fields of `@kiln/llb`'s `DepSpec` that the checksum depends on). */
export interface ChecksumDepSpec {
  /** Paths read inside the input; at least one. */
  selectors: string[];
  /** Selectors are `filepath.Match` patterns. */
  wildcard: boolean;
  /** Follow a symlink at the selector itself. */
  followLinks: boolean;
  includePatterns: string[];
  excludePatterns: string[];
  /**
   * `buildkit`: BuildKit's contenthash instead of Kiln's (for BuildKit's cache formats only;
   * selectors without wildcards or patterns, else the entry is an error). Absent: Kiln's.
   */
  algorithm?: 'buildkit';
}

export interface ChecksumRequest {
  resultId: string;
  deps: ChecksumDepSpec[];
}

export interface ChecksumReplyError {
  code: string;
  message: string;
}

export type ChecksumEntry = { digest: string } | { error: ChecksumReplyError };

export type ChecksumReply = { results: ChecksumEntry[] } | { error: ChecksumReplyError };

const enc = new TextEncoder();
const dec = new TextDecoder();

export function encodeChecksumJson(v: ChecksumRequest | ChecksumReply): Uint8Array {
  return enc.encode(JSON.stringify(v));
}

const strings = (v: unknown): v is string[] =>
  Array.isArray(v) && v.every((s) => typeof s === 'string');

/** The canonical form of a spec (only its fields, in a fixed order): also a stable memo key. */
export function normalizeChecksumDep(d: ChecksumDepSpec): ChecksumDepSpec {
  return {
    selectors: [...d.selectors],
    wildcard: Boolean(d.wildcard),
    followLinks: Boolean(d.followLinks),
    includePatterns: [...d.includePatterns],
    excludePatterns: [...d.excludePatterns],
    ...(d.algorithm === 'buildkit' ? { algorithm: 'buildkit' as const } : {}),
  };
}

/** Parses and checks a request; throws `CHECKSUM_PROTOCOL` for anything malformed. */
export function decodeChecksumRequest(data: Uint8Array): ChecksumRequest {
  let v: unknown;
  try {
    v = JSON.parse(dec.decode(data));
  } catch (cause) {
    throw new ChecksumProtocolError('a checksum request is not valid JSON', cause);
  }
  const r = v as Partial<ChecksumRequest> | null;
  if (!r || typeof r.resultId !== 'string' || !r.resultId || !Array.isArray(r.deps))
    throw new ChecksumProtocolError('a checksum request needs a resultId and deps');
  const deps = r.deps.map((d: Partial<ChecksumDepSpec> | null) => {
    if (
      !d ||
      !strings(d.selectors) ||
      d.selectors.length === 0 ||
      !strings(d.includePatterns ?? []) ||
      !strings(d.excludePatterns ?? [])
    )
      throw new ChecksumProtocolError('a checksum dep needs selectors (strings) and patterns');
    return normalizeChecksumDep({
      selectors: d.selectors,
      wildcard: Boolean(d.wildcard),
      followLinks: Boolean(d.followLinks),
      includePatterns: d.includePatterns ?? [],
      excludePatterns: d.excludePatterns ?? [],
      ...(d.algorithm === 'buildkit' ? { algorithm: 'buildkit' as const } : {}),
    });
  });
  return { resultId: r.resultId, deps };
}

/** Parses a reply; throws `CHECKSUM_PROTOCOL` for anything malformed. */
export function decodeChecksumReply(data: Uint8Array): ChecksumReply {
  let v: unknown;
  try {
    v = JSON.parse(dec.decode(data));
  } catch (cause) {
    throw new ChecksumProtocolError('a checksum reply is not valid JSON', cause);
  }
  const r = v as { results?: unknown; error?: unknown } | null;
  const isError = (e: unknown): e is ChecksumReplyError =>
    typeof e === 'object' &&
    e !== null &&
    typeof (e as ChecksumReplyError).code === 'string' &&
    typeof (e as ChecksumReplyError).message === 'string';
  if (r && isError(r.error)) return { error: r.error };
  if (
    r &&
    Array.isArray(r.results) &&
    r.results.every(
      (e: unknown) =>
        typeof e === 'object' &&
        e !== null &&
        (typeof (e as { digest?: unknown }).digest === 'string' ||
          isError((e as { error?: unknown }).error)),
    )
  )
    return { results: r.results as ChecksumEntry[] };
  throw new ChecksumProtocolError('a checksum reply has neither results nor an error');
}

export class ChecksumProtocolError extends KilnError {
  constructor(message: string, cause?: unknown) {
    super('CHECKSUM_PROTOCOL', message, cause === undefined ? {} : { cause });
  }
}

/** The worker does not hold the result a checksum was asked for. */
export class ChecksumResultUnknownError extends KilnError {
  constructor(resultId: string) {
    super('CHECKSUM_RESULT_UNKNOWN', `result ${resultId} is not held by this worker`, {
      details: { resultId },
    });
  }
}
