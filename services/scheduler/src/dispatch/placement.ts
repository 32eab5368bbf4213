/**
 * Placement: which worker a task is offered to first (cache affinity) and which queue it falls
 * back to. Pure functions over the live workers.
 *
 * - Only workers that support the platform are candidates; native support beats emulation: an
 *   emulated worker is considered only when no native worker of the platform is alive.
 * - The offer goes to the first live, non-draining candidate among the caller's preferred
 *   workers, else to the candidate that holds most of the task's inputs (its registration's
 *   `held` summary or an input's `holder_worker`). No holder: no offer.
 * - The fallback queue is the native queue when a native worker is alive (or nobody is: the
 *   task waits for one), the emulated queue when only emulated workers are.
 */
import type { TaskInit, WorkerInfo } from '@kiln/bus';
import type { Platform } from '@kiln/protocol';
import { platformSupport } from '@kiln/bus';

export interface PlacementPlan {
  /** The worker to offer the task to first, if any. */
  offerTo?: string;
  /** The queue the task goes to when the offer is declined (or right away). */
  queue: 'native' | 'emulated';
  /** Whether any live worker supports the platform at all. */
  capable: boolean;
}

export function planPlacement(
  task: TaskInit,
  platform: Platform,
  preferredWorkers: readonly string[],
  live: readonly WorkerInfo[],
): PlacementPlan {
  const native = live.filter((w) => platformSupport(w, platform) === 'native');
  const emulated = live.filter((w) => platformSupport(w, platform) === 'emulated');
  const pool = native.length > 0 ? native : emulated;
  const queue = native.length > 0 || emulated.length === 0 ? 'native' : 'emulated';
  const capable = pool.length > 0;
  const open = pool.filter((w) => !w.draining);
  const byId = new Map(open.map((w) => [w.id, w]));
  for (const id of preferredWorkers) {
    if (byId.has(id)) return { offerTo: id, queue, capable };
  }
  const inputs = (task.inputs ?? []).filter((i) => i.resultId || i.holderWorker);
  if (inputs.length === 0) return { queue, capable };
  let best: { id: string; score: number; free: number } | undefined;
  for (const w of open) {
    const held = new Set(w.held);
    let score = 0;
    for (const i of inputs) {
      if ((i.resultId && held.has(i.resultId)) || i.holderWorker === w.id) score++;
    }
    if (score === 0) continue;
    if (!best || score > best.score || (score === best.score && w.freeSlots > best.free)) {
      best = { id: w.id, score, free: w.freeSlots };
    }
  }
  return best ? { offerTo: best.id, queue, capable } : { queue, capable };
}
