import { describe, expect, it } from 'vitest';
import { coalesced } from './coalesced-write.js';

/** A write that waits until released, recording what state it saw when it started. */
function gatedWriter(state: { value: number }) {
  const seen: number[] = [];
  const gates: (() => void)[] = [];
  let fail: Error | undefined;
  const write = (): Promise<void> => {
    seen.push(state.value);
    return new Promise<void>((resolve, reject) => {
      gates.push(() => (fail ? reject(fail) : resolve()));
    });
  };
  const release = async (): Promise<void> => {
    // Let the writer start the next write (it is queued on promise settlement).
    for (let i = 0; gates.length === 0 && i < 100; i++) await Promise.resolve();
    gates.shift()?.();
  };
  return {
    write,
    seen,
    release,
    failNext: (e: Error) => (fail = e),
    clearFail: () => (fail = undefined),
  };
}

describe('coalesced', () => {
  it('covers every change made while a write runs with one more write', async () => {
    const state = { value: 0 };
    const w = gatedWriter(state);
    const save = coalesced(w.write);
    state.value = 1;
    const first = save();
    const later: Promise<void>[] = [];
    for (let v = 2; v <= 10; v++) {
      state.value = v;
      later.push(save());
    }
    let laterDone = false;
    void Promise.all(later).then(() => (laterDone = true));
    await w.release();
    await first;
    expect(laterDone).toBe(false); // the first write started before these changes
    await w.release();
    await Promise.all(later);
    // Ten saves, two writes: the second saw the last change.
    expect(w.seen).toEqual([1, 10]);
  });

  it('rejects the saves a failed write covered; the next save writes again', async () => {
    const state = { value: 1 };
    const w = gatedWriter(state);
    const save = coalesced(w.write);
    w.failNext(new Error('disk full'));
    const failed = save();
    await w.release();
    await expect(failed).rejects.toThrow('disk full');
    w.clearFail();
    state.value = 2;
    const ok = save();
    await w.release();
    await ok;
    expect(w.seen).toEqual([1, 2]);
  });
});
