/**
 * Lazy results. A task's output stays on the worker that made it, as a snapshot: its layers are
 * reported with their diffIDs (the result id is their chain ID), and a layer's blob exists in the
 * content store only once something needed it. Whoever needs the blobs (another worker that takes
 * the result as an input, the scheduler answering a solve) asks the holder:
 *
 * - `kiln.materialize.<workerId>`: core request/reply. Request {@link MaterializeRequest} (a
 *   result id), reply {@link MaterializeReply}: every layer of the result, base first, each with
 *   its blob's digest, size and media type, all of them in the store before the reply is sent
 *   (blobs first); or an error (the worker does not hold the result: `MATERIALIZE_RESULT_UNKNOWN`,
 *   or making a blob failed). JSON both ways.
 *
 * No reply (no responders: the holder is gone; a timeout) or an error reply means the result is
 * lost: the asker fails with `TASK_INPUT_LOST` (details `resultId`), and the scheduler reruns the
 * vertex that made it ({@link resultLostRule}).
 */
import { KilnError } from '@kiln/protocol';
import { assertWorkerId } from './subjects.js';
import type { TaskRecord } from './task-record.js';
import { decodeResult, encodeResult, fromBase64, toBase64 } from './codec.js';

export const MATERIALIZE_SUBJECT_PREFIX = 'kiln.materialize';

/** The error code of a task whose input's holder is gone or no longer has it. */
export const INPUT_LOST_CODE = 'TASK_INPUT_LOST';

/** The subject a worker answers materialize requests on. */
export function materializeSubject(workerId: string): string {
  return `${MATERIALIZE_SUBJECT_PREFIX}.${assertWorkerId(workerId)}`;
}

export interface MaterializeRequest {
  resultId: string;
}

/** A layer with its blob in the store. */
export interface MaterializedLayer {
  digest: string;
  diffId: string;
  size: number;
  mediaType: string;
}

export interface MaterializeReplyError {
  code: string;
  message: string;
}

export type MaterializeReply = { layers: MaterializedLayer[] } | { error: MaterializeReplyError };

const enc = new TextEncoder();
const dec = new TextDecoder();

export function encodeMaterializeJson(v: MaterializeRequest | MaterializeReply): Uint8Array {
  return enc.encode(JSON.stringify(v));
}

function parse(data: Uint8Array, what: string): unknown {
  try {
    return JSON.parse(dec.decode(data));
  } catch (cause) {
    throw new MaterializeProtocolError(`a materialize ${what} is not valid JSON`, cause);
  }
}

/** Parses and checks a request; throws `MATERIALIZE_PROTOCOL` for anything malformed. */
export function decodeMaterializeRequest(data: Uint8Array): MaterializeRequest {
  const r = parse(data, 'request') as Partial<MaterializeRequest> | null;
  if (!r || typeof r.resultId !== 'string' || !r.resultId)
    throw new MaterializeProtocolError('a materialize request needs a resultId');
  return { resultId: r.resultId };
}

const isLayer = (l: unknown): l is MaterializedLayer => {
  const x = l as Partial<MaterializedLayer> | null;
  return (
    typeof x === 'object' &&
    x !== null &&
    typeof x.digest === 'string' &&
    x.digest !== '' &&
    typeof x.diffId === 'string' &&
    x.diffId !== '' &&
    typeof x.size === 'number' &&
    typeof x.mediaType === 'string'
  );
};

/** Parses a reply; throws `MATERIALIZE_PROTOCOL` for anything malformed. */
export function decodeMaterializeReply(data: Uint8Array): MaterializeReply {
  const r = parse(data, 'reply') as { layers?: unknown; error?: unknown } | null;
  const e = r?.error as Partial<MaterializeReplyError> | undefined;
  if (e && typeof e.code === 'string' && typeof e.message === 'string')
    return { error: { code: e.code, message: e.message } };
  if (r && Array.isArray(r.layers) && r.layers.every(isLayer))
    return { layers: r.layers.map((l) => ({ ...l })) };
  throw new MaterializeProtocolError('a materialize reply has neither layers nor an error');
}

export class MaterializeProtocolError extends KilnError {
  constructor(message: string, cause?: unknown) {
    super('MATERIALIZE_PROTOCOL', message, cause === undefined ? {} : { cause });
  }
}

/** The worker does not hold the result it was asked to materialize. */
export class MaterializeResultUnknownError extends KilnError {
  constructor(resultId: string) {
    super('MATERIALIZE_RESULT_UNKNOWN', `result ${resultId} is not held by this worker`, {
      details: { resultId },
    });
  }
}

/** Whether every layer of every output of a result has its blob (nothing left to materialize). */
export function resultHasBlobs(
  outputs: readonly { layers?: { digest?: string | null }[] | null }[],
) {
  return outputs.every((o) => (o.layers ?? []).every((l) => !!l.digest));
}

/**
 * The scheduler learnt that the result of a done record is lost (its holder is gone, or no longer
 * has it, and some layer has no blob): the record fails with `TASK_RESULT_LOST`, so the next
 * submit of its key starts a new series of attempts (the vertex reruns). Only while the record
 * still names `holder` and still lacks blobs: a record another rerun replaced, or whose blobs
 * were uploaded meanwhile, stays.
 */
export function resultLostRule(
  r: TaskRecord,
  holder: string,
  now = Date.now(),
): TaskRecord | undefined {
  if (r.state !== 'done' || r.holder !== holder || !r.result) return undefined;
  if (resultHasBlobs(decodeResult(fromBase64(r.result)).outputs)) return undefined;
  return {
    ...r,
    state: 'failed',
    error: {
      code: 'TASK_RESULT_LOST',
      message: `the result's holder ${holder} no longer has it`,
      retryable: true,
    },
    finishedAt: now,
  };
}

/**
 * The holder of a done record's result uploaded layers of it (write-behind): the record's result
 * gains their digests (matched by diffID), so the result no longer depends on the holder. Blobs
 * first: `uploaded` must name blobs already in the store.
 */
export function blobsUploadedRule(
  r: TaskRecord,
  holder: string,
  uploaded: ReadonlyMap<string, MaterializedLayer>,
): TaskRecord | undefined {
  if (r.state !== 'done' || r.holder !== holder || !r.result) return undefined;
  const res = decodeResult(fromBase64(r.result));
  let changed = false;
  for (const o of res.outputs) {
    for (const l of o.layers ?? []) {
      const u = l.digest ? undefined : uploaded.get(l.diffId ?? '');
      if (!u) continue;
      l.digest = u.digest;
      l.size = u.size;
      l.mediaType = u.mediaType;
      changed = true;
    }
  }
  if (!changed) return undefined;
  return { ...r, result: toBase64(encodeResult(res)) };
}
