/** Worker registrations in the `kiln_workers` bucket (key = worker id). */
import type { KV } from '@nats-io/kv';
import { decodeJson, encodeJson } from './codec.js';
import { platformMatches } from '@kiln/protocol';
import type { Platform } from '@kiln/protocol';

export interface WorkerPlatform extends Platform {
  /** True when the worker runs this platform through emulation (qemu binfmt). */
  emulated: boolean;
}

/** What a worker publishes about itself on every heartbeat. */
export interface WorkerInfo {
  v: 1;
  id: string;
  platforms: WorkerPlatform[];
  labels: Record<string, string>;
  /** Concurrency: tasks run at once. */
  slots: number;
  /** Slots not running a task at the time of the heartbeat. */
  freeSlots: number;
  freeDiskBytes: number;
  /**
   * A bounded summary of results held locally (the most recently produced or fetched result ids,
   * newest last, at most {@link HELD_RESULTS_LIMIT}); placement offers tasks whose inputs are
   * listed here to this worker first.
   */
  held: string[];
  /** Whether the worker is draining: it takes no new task. */
  draining: boolean;
  /**
   * A nonce per process start: the worker's incarnation. A registration under the same id with
   * another boot is a restarted worker; whatever the previous boot held is lost.
   */
  boot: string;
  startedAt: number;
  /** The worker's wall clock at this heartbeat (informational). */
  heartbeatAt: number;
  /** Increments with every heartbeat. */
  seq: number;
}

export const HELD_RESULTS_LIMIT = 512;

export function encodeWorkerInfo(w: WorkerInfo): Uint8Array {
  return encodeJson(w);
}

export function decodeWorkerInfo(b: Uint8Array): WorkerInfo {
  return decodeJson<WorkerInfo>(b);
}

/** How a worker supports a platform: `native`, `emulated`, or undefined when it does not. */
export function platformSupport(w: WorkerInfo, p: Platform): 'native' | 'emulated' | undefined {
  let support: 'native' | 'emulated' | undefined;
  for (const wp of w.platforms) {
    if (!platformMatches(wp, p)) continue;
    if (!wp.emulated) return 'native';
    support = 'emulated';
  }
  return support;
}

export async function putWorkerInfo(kv: KV, w: WorkerInfo): Promise<void> {
  await kv.put(w.id, encodeWorkerInfo(w));
}

/** Every registered worker as last written (dead ones included until their key is deleted). */
export async function listWorkers(kv: KV): Promise<WorkerInfo[]> {
  const out: WorkerInfo[] = [];
  const keys = await kv.keys();
  // A set: a key updated while the listing runs (a worker's heartbeat) can be listed twice.
  const all = new Set<string>();
  for await (const k of keys) all.add(k);
  for (const k of all) {
    const e = await kv.get(k);
    if (e && e.operation === 'PUT' && e.length > 0) out.push(decodeWorkerInfo(e.value));
  }
  return out;
}
