/**
 * Workers never write task records: only the scheduler does. A worker asks for each change of a
 * record it holds (claim, result, error, hand-back, uploaded blobs) with a core request on its own
 * subject `kiln.record.<workerId>`; the scheduler ({@link serveRecords}) takes the worker's
 * identity from the subject (under the farm's NATS permissions a worker can publish only on its
 * own, see `nats-permissions.ts`), validates the request, applies the matching rule of
 * `task-record.ts` under compare-and-set, and replies whether it was applied.
 *
 * So the fencing rules hold against a hostile bus client too: a result is accepted only from the
 * worker holding the current attempt's claim (token and identity), a finished record is never
 * overwritten, and a client without the scheduler's credentials cannot write `kiln_tasks` at all.
 *
 * Request (JSON): `{op: "claim", key, token, emulated}` | `{op: "complete", key, token, result}` |
 * `{op: "error", key, token, error, result?}` | `{op: "release", key, token}` |
 * `{op: "blobs", key, layers}`, each with the `boot` nonce of the worker's process (its
 * incarnation: a claim records it, and only the same incarnation can then report or hand back);
 * reply `{applied: boolean}` or `{error: {code, message}}`.
 * No responders means no scheduler is running: the worker retries (results wait in the worker).
 */
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { KilnError } from '@kiln/protocol';
import type { Bus } from './bus.js';
import { decodeJson, decodeResult, encodeJson, fromBase64 } from './codec.js';
import type { MaterializedLayer } from './materialize.js';
import { blobsUploadedRule } from './materialize.js';
import { assertWorkerId } from './subjects.js';
import type { StoredRecord, TaskRecord, TaskRecordError } from './task-record.js';
import { casRecord, claimRule, completeRule, errorRule, releaseRule } from './task-record.js';

export const RECORD_SUBJECT_PREFIX = 'kiln.record';
/** Scheduler instances share the requests (one of them answers each). */
export const RECORD_QUEUE = 'kiln-records';

export function recordSubject(workerId: string): string {
  return `${RECORD_SUBJECT_PREFIX}.${assertWorkerId(workerId)}`;
}

export type RecordRequest = (
  | { op: 'claim'; key: string; token: string; emulated: boolean }
  | { op: 'complete'; key: string; token: string; result: string }
  | { op: 'error'; key: string; token: string; error: TaskRecordError; result?: string }
  | { op: 'release'; key: string; token: string }
  | { op: 'blobs'; key: string; layers: MaterializedLayer[] }
) & {
  /** The asking worker's boot nonce (set by {@link RecordClient}). */
  boot?: string;
};

export type RecordReply = { applied: boolean } | { error: { code: string; message: string } };

export class RecordRequestError extends KilnError {
  constructor(message: string) {
    super('RECORD_REQUEST_INVALID', message);
  }
}

const KEY = /^[-/_=.A-Za-z0-9]{1,1024}$/;
const TOKEN = /^[A-Za-z0-9-]{1,64}$/;
const DIGEST = /^sha256:[a-f0-9]{64}$/;

function str(v: unknown, re: RegExp, what: string): string {
  if (typeof v !== 'string' || !re.test(v)) throw new RecordRequestError(`bad ${what}`);
  return v;
}

/** Checks a request's shape (it comes from a worker: never trusted). */
export function parseRecordRequest(data: Uint8Array): RecordRequest {
  let v: Record<string, unknown>;
  try {
    v = decodeJson<Record<string, unknown>>(data);
  } catch {
    throw new RecordRequestError('not JSON');
  }
  if (typeof v !== 'object' || v === null) throw new RecordRequestError('not an object');
  const key = str(v.key, KEY, 'key');
  const boot = v.boot === undefined ? {} : { boot: str(v.boot, TOKEN, 'boot') };
  if (v.op === 'blobs') {
    if (!Array.isArray(v.layers) || v.layers.length > 10_000)
      throw new RecordRequestError('bad layers');
    const layers = (v.layers as Record<string, unknown>[]).map((l) => ({
      digest: str(l?.digest, DIGEST, 'layer digest'),
      diffId: str(l?.diffId, DIGEST, 'layer diffId'),
      size: Number.isSafeInteger(l?.size) && (l.size as number) >= 0 ? (l.size as number) : -1,
      mediaType: typeof l?.mediaType === 'string' ? l.mediaType : '',
    }));
    if (layers.some((l) => l.size < 0 || !l.mediaType)) throw new RecordRequestError('bad layer');
    return { op: 'blobs', key, layers, ...boot };
  }
  const token = str(v.token, TOKEN, 'token');
  switch (v.op) {
    case 'claim':
      return { op: 'claim', key, token, emulated: v.emulated === true, ...boot };
    case 'release':
      return { op: 'release', key, token, ...boot };
    case 'complete':
      if (typeof v.result !== 'string') throw new RecordRequestError('bad result');
      return { op: 'complete', key, token, result: v.result, ...boot };
    case 'error': {
      const e = v.error as Partial<TaskRecordError> | undefined;
      if (!e || typeof e.code !== 'string' || typeof e.message !== 'string')
        throw new RecordRequestError('bad error');
      if (v.result !== undefined && typeof v.result !== 'string')
        throw new RecordRequestError('bad result');
      const details =
        e.details && typeof e.details === 'object'
          ? Object.fromEntries(Object.entries(e.details).filter(([, x]) => typeof x === 'string'))
          : undefined;
      return {
        op: 'error',
        key,
        token,
        error: {
          code: e.code,
          message: e.message,
          retryable: e.retryable === true,
          ...(typeof e.exitCode === 'number' && e.exitCode ? { exitCode: e.exitCode } : {}),
          ...(details && Object.keys(details).length > 0 ? { details } : {}),
        },
        ...(typeof v.result === 'string' ? { result: v.result } : {}),
        ...boot,
      };
    }
    default:
      throw new RecordRequestError('unknown op');
  }
}

/** A result must decode and name the worker and attempt that report it. */
function checkResult(result: string, workerId: string, token: string): void {
  let r;
  try {
    r = decodeResult(fromBase64(result));
  } catch {
    throw new RecordRequestError('result is not a TaskResult');
  }
  if (r.workerId !== workerId || r.attemptToken !== token)
    throw new RecordRequestError('result names another worker or attempt');
}

/** The rule a request applies for `workerId`, or throws for a malformed result. */
export function recordRequestRule(
  req: RecordRequest,
  workerId: string,
): (r: TaskRecord) => TaskRecord | undefined {
  const who = { id: workerId, boot: req.boot };
  switch (req.op) {
    case 'claim':
      return (r) => claimRule(r, req.token, who, req.emulated);
    case 'complete':
      checkResult(req.result, workerId, req.token);
      return (r) => completeRule(r, req.token, who, req.result);
    case 'error':
      if (req.result !== undefined) checkResult(req.result, workerId, req.token);
      return (r) => errorRule(r, req.token, who, req.error, req.result);
    case 'release':
      return (r) => releaseRule(r, req.token, who);
    case 'blobs': {
      const byDiffId = new Map(req.layers.map((l) => [l.diffId, l]));
      return (r) => blobsUploadedRule(r, workerId, byDiffId);
    }
  }
}

/**
 * Whether `r` already is what `req` from `workerId` asks for: a retried request whose first
 * copy was applied but whose reply was lost (a timeout) must not be told it failed, or the worker
 * would drop a claim it holds (and the task would wait for it forever).
 */
export function recordRequestApplied(
  req: RecordRequest,
  workerId: string,
  r: TaskRecord | undefined,
): boolean {
  if (
    !r ||
    req.op === 'blobs' ||
    r.holder !== workerId ||
    r.holderBoot !== req.boot ||
    r.attemptToken !== req.token
  )
    return false;
  switch (req.op) {
    case 'claim':
      return r.state === 'running';
    case 'complete':
      return r.state === 'done' && r.result === req.result;
    case 'error':
      return r.state === 'errored' && r.result === req.result && r.error?.code === req.error.code;
    case 'release':
      return false;
  }
}

export interface ServeRecordsOptions {
  /** The record as the server last saw it (saves a read); stale is fine (compare-and-set). */
  known?: (key: string) => StoredRecord | undefined;
  /** A request was refused (malformed) or not applied (not the holder, stale attempt). */
  onRefused?: (e: { workerId: string; op: string; key: string; reason: string }) => void;
  /**
   * A request changed the record: the record as written and its revision, before the worker is
   * answered. The scheduler that serves the request learns the change here, without waiting for
   * its own watch of the bucket to bring the same write back.
   */
  onApplied?: (key: string, stored: StoredRecord) => void;
  onError?: (err: unknown) => void;
}

/**
 * Answers `kiln.record.*` (queue group {@link RECORD_QUEUE}) for as long as the subscription
 * lives: the scheduler's half of the record protocol.
 */
export function serveRecords(bus: Bus, o: ServeRecordsOptions = {}): Subscription {
  const handle = async (subject: string, data: Uint8Array): Promise<RecordReply> => {
    const workerId = subject.slice(RECORD_SUBJECT_PREFIX.length + 1);
    let req: RecordRequest | undefined;
    try {
      assertWorkerId(workerId);
      req = parseRecordRequest(data);
      const rule = recordRequestRule(req, workerId);
      const out = await casRecord(bus.tasks, req.key, rule, o.known?.(req.key));
      if (out.applied && out.record) {
        o.onApplied?.(req.key, { record: out.record, revision: out.revision });
        return { applied: true };
      }
      if (recordRequestApplied(req, workerId, out.record)) return { applied: true };
      o.onRefused?.({ workerId, op: req.op, key: req.key, reason: 'not applicable' });
      return { applied: false };
    } catch (err) {
      if (err instanceof KilnError) {
        o.onRefused?.({ workerId, op: req?.op ?? '?', key: req?.key ?? '?', reason: err.message });
        return { error: { code: err.code, message: err.message } };
      }
      o.onError?.(err);
      return { error: { code: 'RECORD_WRITE_FAILED', message: String(err) } };
    }
  };
  return bus.nc.subscribe(`${RECORD_SUBJECT_PREFIX}.*`, {
    queue: RECORD_QUEUE,
    callback: (err, msg) => {
      if (err) return o.onError?.(err);
      void handle(msg.subject, msg.data).then((r) => {
        if (msg.reply) msg.respond(encodeJson(r));
      });
    },
  });
}

/** The scheduler refused a record request (malformed), or failed to write. */
export class RecordRefusedError extends KilnError {
  constructor(code: string, message: string) {
    super(code, message, { retryable: code === 'RECORD_WRITE_FAILED' });
  }
}

/**
 * A worker's half: asks the scheduler to change the records it holds. Each call rejects when no
 * scheduler answers (no responders, timeout): wrap it in `retrying()`.
 */
export class RecordClient {
  readonly #nc: NatsConnection;
  readonly #subject: string;
  readonly #timeoutMs: number;
  readonly #boot: string | undefined;

  /** `boot`: the worker process's nonce (`WorkerInfo.boot`), sent with every request. */
  constructor(nc: NatsConnection, workerId: string, boot?: string, timeoutMs = 10_000) {
    this.#nc = nc;
    this.#subject = recordSubject(workerId);
    this.#boot = boot;
    this.#timeoutMs = timeoutMs;
  }

  /** Whether the change was applied (false: not the holder, or the attempt moved on). */
  async request(req: RecordRequest): Promise<boolean> {
    const body = this.#boot === undefined ? req : { ...req, boot: this.#boot };
    const m = await this.#nc.request(this.#subject, encodeJson(body), {
      timeout: this.#timeoutMs,
    });
    const r = decodeJson<RecordReply>(m.data);
    if ('error' in r) throw new RecordRefusedError(r.error.code, r.error.message);
    return r.applied;
  }
}
