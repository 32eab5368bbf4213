/**
 * Group commit for a state file rewritten whole: `coalesced(write)` returns a `save()` that
 * resolves once a `write()` that started after the call has finished. Calls made while a write
 * runs share the next one, so N concurrent changes cost at most two writes, not N queued ones.
 * `write` reads the state when it starts (so it includes every change made before). A failed
 * write rejects the saves it covered; the next save tries again.
 */
export function coalesced(write: () => Promise<void>): () => Promise<void> {
  let waiters: { resolve: () => void; reject: (err: unknown) => void }[] = [];
  let writing = false;
  const flush = (): void => {
    const batch = waiters;
    waiters = [];
    writing = true;
    write()
      .then(
        () => batch.forEach((w) => w.resolve()),
        (err: unknown) => batch.forEach((w) => w.reject(err)),
      )
      .finally(() => {
        writing = false;
        if (waiters.length > 0) flush();
      })
      .catch(() => undefined);
  };
  return () =>
    new Promise<void>((resolve, reject) => {
      waiters.push({ resolve, reject });
      if (!writing) flush();
    });
}
