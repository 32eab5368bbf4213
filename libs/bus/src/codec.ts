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
