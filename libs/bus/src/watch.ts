/**
 * A KV watch that survives nats-server restarts: when the watch iterator ends or fails while the
 * connection is still open, it is opened again and `onRestart` runs (callers re-read what they
 * may have missed). Stops when `signal` aborts or the connection closes.
 */
import type { KV, KvWatchEntry, KvWatchOptions } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { pause } from './retry.js';

export interface WatchLoopOptions {
  nc: NatsConnection;
  kv: KV;
  watch: KvWatchOptions;
  onEntry: (e: KvWatchEntry) => void;
  /** Runs after every (re)open, once the watch is established. */
  onOpen?: (reopened: boolean) => void;
  /** Reports a failed (re)open; the loop keeps trying. */
  onError?: (err: unknown) => void;
  signal: AbortSignal;
}

/** Resolves once the first watch is open; the loop then runs in the background. */
export async function watchLoop(o: WatchLoopOptions): Promise<void> {
  let first = true;
  let opened!: () => void;
  const ready = new Promise<void>((r) => (opened = r));
  const run = async (): Promise<void> => {
    while (!o.signal.aborted && !o.nc.isClosed()) {
      try {
        const it = await o.kv.watch(o.watch);
        const stop = (): void => it.stop();
        o.signal.addEventListener('abort', stop, { once: true });
        o.onOpen?.(!first);
        if (first) opened();
        first = false;
        try {
          for await (const e of it) o.onEntry(e);
        } finally {
          o.signal.removeEventListener('abort', stop);
        }
      } catch (err) {
        o.onError?.(err);
      }
      if (!o.signal.aborted) await pause(250, o.signal);
    }
    if (first) opened();
  };
  void run();
  await ready;
}
