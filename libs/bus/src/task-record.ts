/**
 * Task records in the `kiln_tasks` bucket and the attempt-fencing rules both sides obey.
 *
 * One record per cache key. `create()` of the key is the dedup point: the first submit of a key
 * creates it; later submits (from any build, any scheduler instance) join it or read its result.
 * Every change is a compare-and-set (`update(key, value, revision)`) through {@link casRecord}, and
 * every transition is one of the pure rules below, so that:
 *
 * - a worker claims an attempt only while it is `queued` under the token the worker was given;
 * - a result (or an error) is accepted only from the holder of the current token: a worker whose
 *   attempt was re-dispatched (it was presumed dead) can never overwrite the record;
 * - the holder is an incarnation of a worker, its id and the boot nonce of the process
 *   (`holderBoot`): a worker restarted under the same id is another holder, so the scheduler
 *   re-dispatches what its predecessor held as soon as it registers (nothing waits on the dead);
 * - the scheduler re-dispatches by writing a fresh token, which makes every older copy of the
 *   task (a queue message, a late offer reply) stale.
 */
import { randomUUID } from 'node:crypto';
import { JetStreamApiCodes, JetStreamApiError } from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import { workerpb } from '@kiln/protocol';
import type { Task, TaskErrorInit } from './codec.js';
import { attemptSuffixMatches, decodeJson, encodeJson, encodeTask, toBase64 } from './codec.js';
import { RECORD_HEADER, RECORD_REV_HEADER, TASK_LEN_HEADER } from './offer.js';

/**
 * - `queued`: attempt `attempt` is offered or on a queue under `attemptToken`, not yet claimed.
 * - `running`: `holder` claimed the current attempt.
 * - `errored`: the current attempt failed; the scheduler decides to retry or fail (non-terminal).
 * - `done`, `failed`, `cancelled`: terminal.
 */
export type TaskState = 'queued' | 'running' | 'errored' | 'done' | 'failed' | 'cancelled';

export const TERMINAL_STATES: readonly TaskState[] = ['done', 'failed', 'cancelled'];

/** Where the current attempt was placed; `released`: its holder handed it back (draining). */
export type Placement = 'offer' | 'native' | 'emulated' | 'released';

export interface TaskRecordError {
  code: string;
  message: string;
  retryable: boolean;
  exitCode?: number;
  /** The error's structured data (e.g. `resultId` of a lost input). */
  details?: Record<string, string>;
}

export interface TaskRecord {
  v: 1;
  taskId: string;
  cacheKey: string;
  /** `os/arch[/variant]`, normalized. */
  platform: string;
  attempt: number;
  attemptToken: string;
  state: TaskState;
  /** Builds waiting for this task; the task is cancelled when the last one leaves. */
  builds: string[];
  placement?: Placement;
  /** The worker the current attempt was offered to (placement `offer`). */
  offeredTo?: string;
  /** The worker that claimed the current attempt. */
  holder?: string;
  /** The boot nonce of the holder's process (its incarnation, `WorkerInfo.boot`). */
  holderBoot?: string;
  /** Whether the holder runs the platform through emulation. */
  emulated?: boolean;
  /** The task without its attempt fields, base64 protobuf, so a new scheduler can re-dispatch. */
  task: string;
  /** The accepted `TaskResult` of the current attempt (base64 protobuf), `done`/`errored`. */
  result?: string;
  error?: TaskRecordError;
  /** Wall-clock ms (informational; liveness never compares clocks across machines). */
  createdAt: number;
  dispatchedAt: number;
  claimedAt?: number;
  finishedAt?: number;
}

export function newAttemptToken(): string {
  return randomUUID();
}

export function isTerminal(r: TaskRecord): boolean {
  return TERMINAL_STATES.includes(r.state);
}

/** Whether `token` names the live attempt of the record (a holder should keep working). */
export function isCurrentAttempt(r: TaskRecord, token: string): boolean {
  return r.attemptToken === token && (r.state === 'queued' || r.state === 'running');
}

/**
 * Who asks for a change: a worker id, or a worker id and the boot nonce of its process (its
 * incarnation). Requests from workers always carry the boot (record-service.ts).
 */
export type Claimant = string | { id: string; boot?: string };

function claimant(c: Claimant): { id: string; boot?: string } {
  return typeof c === 'string' ? { id: c } : c;
}

/** Whether `c` is the incarnation holding the record's current attempt `token`. */
export function holds(r: TaskRecord, token: string, c: Claimant): boolean {
  const { id, boot } = claimant(c);
  return (
    r.state === 'running' &&
    r.attemptToken === token &&
    r.holder === id &&
    (r.holderBoot === undefined || r.holderBoot === boot)
  );
}

// ---- Transitions: pure functions; undefined means "not allowed from this record". ----

/** A worker claims the attempt it was given. */
export function claimRule(
  r: TaskRecord,
  token: string,
  worker: Claimant,
  emulated: boolean,
  now = Date.now(),
): TaskRecord | undefined {
  if (r.state !== 'queued' || r.attemptToken !== token) return undefined;
  const { id, boot } = claimant(worker);
  return { ...r, state: 'running', holder: id, holderBoot: boot, emulated, claimedAt: now };
}

/** The holder of the current attempt reports success. */
export function completeRule(
  r: TaskRecord,
  token: string,
  worker: Claimant,
  result: string,
  now = Date.now(),
): TaskRecord | undefined {
  if (!holds(r, token, worker)) return undefined;
  return { ...r, state: 'done', result, finishedAt: now, error: undefined };
}

/** The holder of the current attempt reports a failure; the scheduler decides what follows. */
export function errorRule(
  r: TaskRecord,
  token: string,
  worker: Claimant,
  error: TaskRecordError,
  result: string | undefined,
  now = Date.now(),
): TaskRecord | undefined {
  if (!holds(r, token, worker)) return undefined;
  return { ...r, state: 'errored', error, result, finishedAt: now };
}

/** The scheduler starts a new attempt under a fresh token (first dispatch or a retry). */
export function redispatchRule(
  r: TaskRecord,
  placement: Placement,
  offeredTo: string | undefined,
  opts: { countAttempt?: boolean; now?: number } = {},
): TaskRecord {
  const now = opts.now ?? Date.now();
  return {
    ...r,
    state: 'queued',
    attempt: opts.countAttempt === false ? r.attempt : r.attempt + 1,
    attemptToken: newAttemptToken(),
    placement,
    offeredTo,
    holder: undefined,
    holderBoot: undefined,
    emulated: undefined,
    result: undefined,
    error: undefined,
    claimedAt: undefined,
    finishedAt: undefined,
    dispatchedAt: now,
  };
}

/**
 * The holder hands its attempt back without a result (it is draining and out of time); the
 * scheduler re-dispatches it under a new token without counting an attempt.
 */
export function releaseRule(
  r: TaskRecord,
  token: string,
  worker: Claimant,
): TaskRecord | undefined {
  if (!holds(r, token, worker)) return undefined;
  return {
    ...r,
    state: 'queued',
    placement: 'released',
    holder: undefined,
    holderBoot: undefined,
    claimedAt: undefined,
  };
}

/** The scheduler moves the current attempt to another queue (e.g. an offer was declined). */
export function replaceRule(
  r: TaskRecord,
  token: string,
  placement: Placement,
): TaskRecord | undefined {
  if (r.state !== 'queued' || r.attemptToken !== token) return undefined;
  return { ...r, placement, offeredTo: undefined };
}

/**
 * The record of a step fused into another task (`Task.chain`): created `done` by the scheduler
 * from the step's result, which came with the result of the task it was fused into (accepted
 * under that task's fencing), as if the step had run as a task of its own on that task's holder.
 * Only ever created, never written over an existing record (`createRecord`: a key that exists is
 * used as it is).
 */
export function fusedStepRecord(
  r: Pick<TaskRecord, 'taskId' | 'cacheKey' | 'platform' | 'builds' | 'task' | 'result'> & {
    holder: string;
    startedAt: number;
    finishedAt: number;
  },
  now = Date.now(),
): TaskRecord {
  return {
    v: 1,
    taskId: r.taskId,
    cacheKey: r.cacheKey,
    platform: r.platform,
    attempt: 1,
    attemptToken: newAttemptToken(),
    state: 'done',
    builds: r.builds,
    holder: r.holder,
    task: r.task,
    result: r.result,
    createdAt: now,
    dispatchedAt: r.startedAt,
    claimedAt: r.startedAt,
    finishedAt: r.finishedAt,
  };
}

/** Terminal failure (attempts exhausted, non-retryable error, no worker for the platform). */
export function failRule(
  r: TaskRecord,
  error: TaskRecordError,
  now = Date.now(),
): TaskRecord | undefined {
  if (isTerminal(r)) return undefined;
  return { ...r, state: 'failed', error, finishedAt: now };
}

/** A build stops waiting; the last one to leave cancels the task. */
export function leaveRule(
  r: TaskRecord,
  buildId: string,
  now = Date.now(),
): TaskRecord | undefined {
  if (!r.builds.includes(buildId)) return undefined;
  const builds = r.builds.filter((b) => b !== buildId);
  if (builds.length > 0 || isTerminal(r)) return { ...r, builds };
  return {
    ...r,
    builds,
    state: 'cancelled',
    error: { code: 'DISPATCH_CANCELLED', message: 'cancelled', retryable: false },
    finishedAt: now,
  };
}

/** A build joins a task that runs or is queued. */
export function joinRule(r: TaskRecord, buildId: string): TaskRecord | undefined {
  if (r.builds.includes(buildId)) return undefined;
  return { ...r, builds: [...r.builds, buildId] };
}

export function taskErrorToRecord(e: TaskErrorInit | null | undefined): TaskRecordError {
  return {
    code: e?.code || 'TASK_FAILED',
    message: e?.message || 'task failed',
    retryable: e?.retryable ?? false,
    ...(e?.exitCode ? { exitCode: e.exitCode } : {}),
    ...(e?.details && Object.keys(e.details).length > 0 ? { details: { ...e.details } } : {}),
  };
}

// ---- Storage ----

export function encodeRecord(r: TaskRecord): Uint8Array {
  return encodeJson(r);
}

export function decodeRecord(b: Uint8Array): TaskRecord {
  return decodeJson<TaskRecord>(b);
}

export interface StoredRecord {
  record: TaskRecord;
  revision: number;
}

/** The record of a key, or undefined (also for a deleted key). */
export async function getRecord(kv: KV, key: string): Promise<StoredRecord | undefined> {
  const e = await kv.get(key);
  if (!e || e.operation !== 'PUT' || e.length === 0) return undefined;
  return { record: decodeRecord(e.value), revision: e.revision };
}

/** Creates the record of a new key; false when the key exists (dedup). */
export async function createRecord(kv: KV, key: string, r: TaskRecord): Promise<number | false> {
  try {
    return await kv.create(key, encodeRecord(r));
  } catch (err) {
    if (isWrongRevision(err)) return false;
    throw err;
  }
}

export function isWrongRevision(err: unknown): boolean {
  return (
    err instanceof JetStreamApiError &&
    (err.code === JetStreamApiCodes.StreamWrongLastSequence ||
      err.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown)
  );
}

export interface CasOutcome {
  /** Whether `change` returned a record and it was written. */
  applied: boolean;
  /** The record as written (applied) or as last read (not applied); undefined if absent. */
  record: TaskRecord | undefined;
  revision: number;
}

/**
 * Compare-and-set loop: reads the record (or starts from `known`), applies `change`, and writes
 * it under the revision it read; on a concurrent write it re-reads and applies `change` again.
 * `change` returning undefined stops without writing, but only on a record read from the store:
 * `known` may lag behind it (a watch not caught up), and a refusal on a stale copy (a report
 * checked against the record from before its own claim) would drop a write that applies.
 */
export async function casRecord(
  kv: KV,
  key: string,
  change: (r: TaskRecord) => TaskRecord | undefined,
  known?: StoredRecord,
): Promise<CasOutcome> {
  let cur = known ?? (await getRecord(kv, key));
  let fresh = !known;
  for (let i = 0; ; i++) {
    if (!cur) {
      if (fresh) return { applied: false, record: undefined, revision: 0 };
    } else {
      const next = change(cur.record);
      if (next) {
        try {
          const revision = await kv.update(key, encodeRecord(next), cur.revision);
          return { applied: true, record: next, revision };
        } catch (err) {
          if (!isWrongRevision(err) || i > 100) throw err;
        }
      } else if (fresh) return { applied: false, record: cur.record, revision: cur.revision };
    }
    cur = await getRecord(kv, key);
    fresh = true;
  }
}

/**
 * The headers of a task copy ({@link RECORD_HEADER}): the record minus its task, and revision;
 * with `cleanLength` (the body is `encodeAttemptTask(clean, ...)`), {@link TASK_LEN_HEADER}.
 */
export function recordHeaderValues(
  r: TaskRecord,
  revision: number,
  cleanLength?: number,
): [string, string][] {
  const { task: _task, ...rest } = r;
  const out: [string, string][] = [
    [RECORD_HEADER, JSON.stringify(rest)],
    [RECORD_REV_HEADER, String(revision)],
  ];
  if (cleanLength !== undefined) out.push([TASK_LEN_HEADER, String(cleanLength)]);
  return out;
}

/**
 * The record a task copy was sent with, or undefined when the headers are absent or bad. With the
 * copy's `body` and a valid {@link TASK_LEN_HEADER}, the record's task is the body's clean prefix;
 * otherwise the task is encoded again without its attempt fields.
 */
export function recordFromHeaders(
  get: (name: string) => string,
  task: Task,
  body?: Uint8Array,
): StoredRecord | undefined {
  const json = get(RECORD_HEADER);
  const revision = Number(get(RECORD_REV_HEADER));
  if (!json || !Number.isSafeInteger(revision) || revision <= 0) return undefined;
  try {
    const rest = JSON.parse(json) as Omit<TaskRecord, 'task'>;
    if (rest.attemptToken !== task.attemptToken || rest.cacheKey !== task.cacheKey)
      return undefined;
    const lenHeader = body ? get(TASK_LEN_HEADER) : '';
    const cleanLength = lenHeader ? Number(lenHeader) : NaN;
    let encoded: string;
    if (body && lenHeader && attemptSuffixMatches(body, cleanLength, task)) {
      encoded = toBase64(body.subarray(0, cleanLength));
    } else {
      const clean = workerpb.Task.create({ ...task, attemptToken: '', attempt: 0 });
      encoded = toBase64(encodeTask(clean));
    }
    return { record: { ...rest, task: encoded }, revision };
  } catch {
    return undefined;
  }
}
