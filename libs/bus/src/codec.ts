/** Message codecs of the task bus: protobuf tasks and results, JSON records. */
import { workerpb } from '@kiln/protocol';

/** A decoded `kiln.worker.v1.Task`. */
export type Task = InstanceType<typeof workerpb.Task>;
/** The fields of a task as a plain object (`kiln.worker.v1.ITask`). */
export type TaskInit = NonNullable<Parameters<typeof workerpb.Task.create>[0]>;
/** A decoded `kiln.worker.v1.TaskResult`. */
export type TaskResult = InstanceType<typeof workerpb.TaskResult>;
/** The fields of a result as a plain object (`kiln.worker.v1.ITaskResult`). */
export type TaskResultInit = NonNullable<Parameters<typeof workerpb.TaskResult.create>[0]>;
/** `kiln.worker.v1.ITaskError`. */
export type TaskErrorInit = NonNullable<TaskResultInit['error']>;

export function encodeTask(t: TaskInit): Uint8Array {
  return workerpb.Task.encode(t).finish();
}

/**
 * The body of one attempt's task copy: the task encoded without its attempt fields (`clean`, as
 * the record keeps it), followed by the attempt fields. Protobuf concatenation is a merge, so
 * this decodes as the task with `attemptToken` and `attempt` set; the clean part is encoded once
 * per task instead of once per attempt, and a worker can take it back without re-encoding
 * ({@link attemptSuffixMatches}).
 */
export function encodeAttemptTask(
  clean: Uint8Array,
  attemptToken: string,
  attempt: number,
): Uint8Array {
  const suffix = workerpb.Task.encode({ attemptToken, attempt }).finish();
  const out = new Uint8Array(clean.length + suffix.length);
  out.set(clean, 0);
  out.set(suffix, clean.length);
  return out;
}

/** Whether `body[cleanLength..]` is exactly the attempt fields of `task` (see {@link encodeAttemptTask}). */
export function attemptSuffixMatches(body: Uint8Array, cleanLength: number, task: Task): boolean {
  if (!Number.isSafeInteger(cleanLength) || cleanLength < 0 || cleanLength > body.length)
    return false;
  const suffix = workerpb.Task.encode({
    attemptToken: task.attemptToken,
    attempt: task.attempt,
  }).finish();
  if (body.length - cleanLength !== suffix.length) return false;
  for (let i = 0; i < suffix.length; i++) if (body[cleanLength + i] !== suffix[i]) return false;
  return true;
}

export function decodeTask(b: Uint8Array): Task {
  return workerpb.Task.decode(b);
}

export function encodeResult(r: TaskResultInit): Uint8Array {
  return workerpb.TaskResult.encode(r).finish();
}

export function decodeResult(b: Uint8Array): TaskResult {
  return workerpb.TaskResult.decode(b);
}

const enc = new TextEncoder();
const dec = new TextDecoder();

export function encodeJson(v: unknown): Uint8Array {
  return enc.encode(JSON.stringify(v));
}

export function decodeJson<T>(b: Uint8Array): T {
  return JSON.parse(dec.decode(b)) as T;
}

export function toBase64(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64');
}

export function fromBase64(s: string): Uint8Array {
  return new Uint8Array(Buffer.from(s, 'base64'));
}
