/**
 * Retrying bus calls through a nats-server restart or a reconnect: JetStream API calls fail
 * (timeouts, "no responders") while the server is away, and succeed again once it is back.
 */
export interface RetryOptions {
  /** Give up after this long (default 60 s); the last error is rethrown. */
  timeoutMs?: number;
  /** Stop retrying when aborted; the last error is rethrown. */
  signal?: AbortSignal;
  /**
   * Whether an error is worth retrying (default: all but {@link isPermanentBusError}s, which the
   * same call meets every time).
   */
  retryable?: (err: unknown) => boolean;
}

/**
 * An error the same bus call will meet again: nats.js refuses an argument (a message above the
 * server's max_payload, a bad subject) before anything is sent.
 */
export function isPermanentBusError(err: unknown): boolean {
  return err instanceof Error && err.name === 'InvalidArgumentError';
}

export async function retrying<T>(fn: () => Promise<T>, opts: RetryOptions = {}): Promise<T> {
  const deadline = Date.now() + (opts.timeoutMs ?? 60_000);
  let wait = 25;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (!(opts.retryable ?? ((e: unknown) => !isPermanentBusError(e)))(err)) throw err;
      if (opts.signal?.aborted || Date.now() + wait > deadline) throw err;
    }
    await pause(wait, opts.signal);
    wait = Math.min(wait * 2, 1_000);
  }
}

/** A cancellable pause between retries (not a synchronisation primitive). */
export function pause(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
