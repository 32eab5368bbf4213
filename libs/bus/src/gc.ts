/**
 * Disk usage and pruning of a worker's local cache (its held results and snapshots), asked of one
 * worker at a time by the scheduler serving the control API's DiskUsage and Prune:
 *
 * - `kiln.gc.<workerId>`: core request/reply, JSON both ways. Request {@link GcRequest}: `du`
 *   lists the worker's usage records (filtered); `prune` removes what the policy selects (never
 *   what a running task holds) and answers the records it removed. Reply {@link GcReply}: the
 *   records, or an error (`GC_PROTOCOL` for a malformed request, `GC_FAILED`).
 *
 * A record is BuildKit's `UsageRecord` (control.proto) with times in milliseconds since the
 * epoch; the scheduler adds nothing but the aggregation over workers.
 */
import { KilnError } from '@kiln/protocol';
import { assertWorkerId } from './subjects.js';

export const GC_SUBJECT_PREFIX = 'kiln.gc';

/** The subject a worker answers disk usage and prune requests on. */
export function gcSubject(workerId: string): string {
  return `${GC_SUBJECT_PREFIX}.${assertWorkerId(workerId)}`;
}

/** One record of a worker's cache, as BuildKit's `UsageRecord`. */
export interface GcUsageRecord {
  id: string;
  mutable: boolean;
  inUse: boolean;
  /** Bytes of disk this record's own data takes. */
  size: number;
  parents: string[];
  createdAtMs: number;
  /** 0: never used since it was made. */
  lastUsedAtMs: number;
  usageCount: number;
  description: string;
  /** BuildKit's record types: `regular`, `source.local`, `exec.cachemount`, ... */
  recordType: string;
  shared: boolean;
}

export type GcRequest =
  | { op: 'du'; filter: string[] }
  | {
      op: 'prune';
      filter: string[];
      /** Also records a plain prune keeps (BuildKit's `--all`). */
      all: boolean;
      /** Keep what was used within this many milliseconds (0: no such limit). */
      keepDurationMs: number;
      /** Remove least recently used records only until the total is at most this (0: no limit). */
      keepBytes: number;
    };

export interface GcReplyError {
  code: string;
  message: string;
}

export type GcReply = { records: GcUsageRecord[] } | { error: GcReplyError };

const enc = new TextEncoder();
const dec = new TextDecoder();

export function encodeGcJson(v: GcRequest | GcReply): Uint8Array {
  return enc.encode(JSON.stringify(v));
}

function parse(data: Uint8Array, what: string): unknown {
  try {
    return JSON.parse(dec.decode(data));
  } catch (cause) {
    throw new GcProtocolError(`a gc ${what} is not valid JSON`, cause);
  }
}

const isStrings = (v: unknown): v is string[] =>
  Array.isArray(v) && v.every((x) => typeof x === 'string');
const isCount = (v: unknown): v is number =>
  typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/** Parses and checks a request; throws `GC_PROTOCOL` for anything malformed. */
export function decodeGcRequest(data: Uint8Array): GcRequest {
  const r = parse(data, 'request') as Record<string, unknown> | null;
  const filter = r?.filter ?? [];
  if (!isStrings(filter)) throw new GcProtocolError('a gc request filter is a list of strings');
  if (r?.op === 'du') return { op: 'du', filter };
  if (r?.op === 'prune') {
    const keepDurationMs = r.keepDurationMs ?? 0;
    const keepBytes = r.keepBytes ?? 0;
    if (!isCount(keepDurationMs) || !isCount(keepBytes))
      throw new GcProtocolError('keepDurationMs and keepBytes are non-negative integers');
    return { op: 'prune', filter, all: r.all === true, keepDurationMs, keepBytes };
  }
  throw new GcProtocolError('a gc request has op "du" or "prune"');
}

const isRecord = (x: unknown): x is GcUsageRecord => {
  const r = x as Partial<GcUsageRecord> | null;
  return (
    typeof r === 'object' &&
    r !== null &&
    typeof r.id === 'string' &&
    typeof r.size === 'number' &&
    typeof r.inUse === 'boolean' &&
    typeof r.mutable === 'boolean' &&
    isStrings(r.parents) &&
    typeof r.createdAtMs === 'number' &&
    typeof r.lastUsedAtMs === 'number' &&
    typeof r.usageCount === 'number' &&
    typeof r.description === 'string' &&
    typeof r.recordType === 'string' &&
    typeof r.shared === 'boolean'
  );
};

/** Parses a reply; throws `GC_PROTOCOL` for anything malformed. */
export function decodeGcReply(data: Uint8Array): GcReply {
  const r = parse(data, 'reply') as { records?: unknown; error?: unknown } | null;
  const e = r?.error as Partial<GcReplyError> | undefined;
  if (e && typeof e.code === 'string' && typeof e.message === 'string')
    return { error: { code: e.code, message: e.message } };
  if (r && Array.isArray(r.records) && r.records.every(isRecord))
    return { records: r.records.map((x) => ({ ...x, parents: [...x.parents] })) };
  throw new GcProtocolError('a gc reply has neither records nor an error');
}

export class GcProtocolError extends KilnError {
  constructor(message: string, cause?: unknown) {
    super('GC_PROTOCOL', message, cause === undefined ? {} : { cause });
  }
}
