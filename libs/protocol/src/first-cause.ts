/**
 * Errors name their first cause. When an operation fails and the cleanup that follows fails too
 * (a temp file that cannot be removed on a store that turned read-only, a mount that cannot be
 * released), the operation's error is the one reported: the cleanup's is attached to it as
 * `suppressed` (and logged by whoever logs the error), never thrown in its place.
 *
 * Use {@link withCleanup} for "do, then always clean up" (a `try/finally` whose `finally` can
 * throw masks the `try`'s error), and {@link cleanupAfter} in a `catch` block that cleans up
 * before rethrowing.
 */

/** Errors of cleanups that ran after `err` and failed too (first cause first). */
export function suppressedOf(err: unknown): unknown[] {
  const s = (err as { suppressed?: unknown[] } | null)?.suppressed;
  return Array.isArray(s) ? s : [];
}

/** Attaches `cleanupErr` to `err` (an object) as suppressed; returns `err`. */
export function suppress(err: unknown, cleanupErr: unknown): unknown {
  if (err !== null && typeof err === 'object') {
    const list = suppressedOf(err);
    try {
      Object.defineProperty(err, 'suppressed', {
        value: [...list, cleanupErr],
        enumerable: false,
        configurable: true,
        writable: true,
      });
    } catch {
      // a frozen error: the cleanup's error is dropped, the first cause still wins
    }
  }
  return err;
}

/**
 * Runs `cleanup` after `err` was caught, then throws `err`: a failing cleanup is attached to it
 * (`suppressed`), not thrown instead of it.
 */
export async function cleanupAfter(err: unknown, ...cleanups: (() => unknown)[]): Promise<never> {
  for (const c of cleanups) {
    try {
      await c();
    } catch (cleanupErr) {
      suppress(err, cleanupErr);
    }
  }
  throw err;
}

/**
 * Runs `body`, then each of `cleanups` in order whatever happened (every one runs). A failure of
 * `body` is what rejects (the first cause; failed cleanups are attached to it); when `body`
 * succeeded, the first failed cleanup rejects (later ones attached to it).
 */
export async function withCleanup<T>(
  body: () => Promise<T>,
  ...cleanups: (() => unknown)[]
): Promise<T> {
  let result: T;
  try {
    result = await body();
  } catch (err) {
    return cleanupAfter(err, ...cleanups);
  }
  for (let i = 0; i < cleanups.length; i++) {
    try {
      await cleanups[i]!();
    } catch (err) {
      return cleanupAfter(err, ...cleanups.slice(i + 1));
    }
  }
  return result;
}
