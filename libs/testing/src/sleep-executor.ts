/**
 * A trivial task runner for tests and benchmarks of the dispatch path, independent of op
 * execution. It reads its instructions from the op metadata's description:
 *
 * - `kiln.test.sleep-ms`: sleep this long (default 0: a no-op);
 * - `kiln.test.fail`: `retryable` (throw a retryable error), `fatal` (non-retryable);
 * - `kiln.test.output`: the result id it produces (default `res-<cache key>`);
 * - `kiln.test.lazy`: the result has one layer with no blob yet (only its holder has it).
 *
 * The sleep ends early when the signal aborts.
 */
import { KilnError } from '@kiln/protocol';
import type { RunTask, TaskOutcome } from '@kiln/bus';

export const SLEEP_MS = 'kiln.test.sleep-ms';
export const FAIL = 'kiln.test.fail';
export const OUTPUT = 'kiln.test.output';
export const LAZY = 'kiln.test.lazy';

export const sleepExecutor: RunTask = async (task, signal, progress): Promise<TaskOutcome> => {
  const d = task.metadata?.description ?? {};
  const ms = Number(d[SLEEP_MS] ?? '0');
  if (ms > 0) {
    progress({ stage: 'sleep', current: 0, total: ms });
    await new Promise<void>((resolve) => {
      const t = setTimeout(done, ms);
      function done(): void {
        clearTimeout(t);
        signal.removeEventListener('abort', done);
        resolve();
      }
      signal.addEventListener('abort', done, { once: true });
    });
  }
  if (d[FAIL] === 'retryable')
    throw new KilnError('TEST_FAIL', 'test task failed', { retryable: true });
  if (d[FAIL] === 'fatal') throw new KilnError('TEST_FATAL', 'test task failed for good');
  const resultId = d[OUTPUT] ?? `res-${task.cacheKey}`;
  if (d[LAZY]) return { outputs: [{ resultId, layers: [{ diffId: resultId, digest: '' }] }] };
  return { outputs: [{ resultId }] };
};
