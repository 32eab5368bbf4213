/**
 * Live view of the `kiln_workers` bucket. Liveness is judged on this process's clock: a worker
 * is alive while its registration changed within `heartbeatTimeoutMs` of now, as observed here
 * (never comparing clocks across machines). While the connection to NATS is down nobody's
 * heartbeats arrive, so {@link WorkerTable.refreshAll} restarts every worker's clock on reconnect.
 * A worker is an incarnation: its id and the boot nonce of its process (`WorkerInfo.boot`).
 */
import type { WorkerInfo } from '@kiln/bus';
import { decodeWorkerInfo } from '@kiln/bus';
import type { KvWatchEntry } from '@nats-io/kv';

interface Seen {
  info: WorkerInfo;
  lastSeen: number;
}

export class WorkerTable {
  readonly #workers = new Map<string, Seen>();

  constructor(readonly heartbeatTimeoutMs: number) {}

  /** Applies one watch entry: a put refreshes the worker, a delete removes it (it left). */
  apply(e: KvWatchEntry, now = Date.now()): void {
    if (e.operation !== 'PUT' || e.length === 0) {
      this.#workers.delete(e.key);
      return;
    }
    const info = decodeWorkerInfo(e.value);
    const prev = this.#workers.get(info.id);
    // A replayed old value (watch reopened) must not make a dead worker look alive again.
    if (prev && prev.info.boot === info.boot && prev.info.seq >= info.seq) return;
    this.#workers.set(info.id, { info, lastSeen: now });
  }

  refreshAll(now = Date.now()): void {
    for (const s of this.#workers.values()) s.lastSeen = now;
  }

  /**
   * Whether worker `id` is alive; with `boot`, whether that incarnation of it is (a worker
   * restarted under the same id has another boot: what the previous one held is lost at once).
   */
  isAlive(id: string, now = Date.now(), boot?: string): boolean {
    const s = this.#workers.get(id);
    if (s === undefined || now - s.lastSeen > this.heartbeatTimeoutMs) return false;
    return boot === undefined || s.info.boot === boot;
  }

  get(id: string): WorkerInfo | undefined {
    return this.#workers.get(id)?.info;
  }

  /**
   * Forgets workers unheard of for `afterMs` and returns their ids, so that their registrations
   * can be deleted (server 2.9 has no per-key TTL; a killed worker never deletes its own).
   */
  expire(afterMs: number, now = Date.now()): string[] {
    const gone: string[] = [];
    for (const [id, s] of this.#workers) {
      if (now - s.lastSeen > afterMs) {
        this.#workers.delete(id);
        gone.push(id);
      }
    }
    return gone;
  }

  /** Workers alive now. */
  alive(now = Date.now()): WorkerInfo[] {
    const out: WorkerInfo[] = [];
    for (const s of this.#workers.values()) {
      if (now - s.lastSeen <= this.heartbeatTimeoutMs) out.push(s.info);
    }
    return out;
  }
}
