/**
 * Fusing linear chains of file ops and RUNs into one task: the vertices that can run on a worker right
 * after a task's op, each on the output of the one before, without coming back to the scheduler
 * (one dispatch, claim and report for the chain instead of one per step).
 *
 * A step's cache key names its inputs' result ids, so the scheduler cannot key a step before the
 * step before it ran: the worker runs the steps unkeyed and reports each one's outputs with the
 * task's result (`TaskResult.chain`); the solver then keys each step exactly as if it had run
 * alone and records it under that key (`Dispatcher.adopt`). Only what is certain to run next is
 * fused, so fusing never runs a step earlier than the scheduler would have dispatched it, nor
 * one it would not have run:
 *
 * - the step is a file op or a RUN (not a source, merge or diff), on the platform of the
 *   task (a RUN's output lines are sent as its own vertex's); a RUN is the last step of a chain,
 *   and a RUN's task has none: the steps of a chain are recorded when the task ends, so a RUN
 *   followed by other steps would run again, finished, if the task were lost after it (a worker
 *   or a scheduler killed); file ops before it are cheap to run again;
 * - exactly one of its inputs is the previous vertex's output, and that input is not keyed by
 *   its content (a COPY's destination, never its source: a content key needs the previous
 *   result's checksum first);
 * - the previous vertex has no other consumer and is not the build's result (nothing else waits
 *   for it while the chain runs);
 * - every other input is done, and the step is wanted by the build and not run yet;
 * - the task is not a source's, unless it ignores the cache: a source is resolved again in every
 *   build even when it has not changed (an image tag, a local context), and the steps after an
 *   unchanged one are cache hits, which fusing would run again.
 */
import { inputDigests } from '@kiln/llb';
import type { LoadedDefinition, LoadedOp } from '@kiln/llb';
import { depSpecs } from '@kiln/llb';

/**
 * The most steps fused after one task, and the most bytes of their ops: the task and its result
 * (each step's outputs name their whole layer chain) travel in one bus message and one record.
 */
export const MAX_CHAIN_STEPS = 16;
export const MAX_CHAIN_BYTES = 128 * 1024;

/** A step of a chain: the vertex, and which of its inputs is the previous vertex's output. */
export interface ChainLink {
  lo: LoadedOp;
  chainedInput: number;
}

/** Who consumes each vertex's outputs, by digest (distinct consumers). */
export function consumersOf(g: LoadedDefinition): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  for (const lo of g.ops.values())
    for (const d of inputDigests(lo)) {
      let s = out.get(d);
      if (!s) out.set(d, (s = new Set()));
      s.add(lo.digest);
    }
  return out;
}

export interface ChainState {
  consumers: ReadonlyMap<string, ReadonlySet<string>>;
  /** Whether vertex `d` has a result in this build. */
  done(d: string): boolean;
  /** Whether vertex `d` is wanted by the build and waits for its inputs (not started). */
  waiting(d: string): boolean;
  /** The platform a vertex runs on (`os/arch[/variant]`). */
  platform(lo: LoadedOp): string;
  /** Whether a vertex is never answered from the cache (`--no-cache`). */
  ignoresCache(lo: LoadedOp): boolean;
}

/** The steps that can be fused after `head` (possibly none), in order. */
export function chainAfter(g: LoadedDefinition, head: LoadedOp, s: ChainState): ChainLink[] {
  const out: ChainLink[] = [];
  if (head.op.exec || (head.op.source && !s.ignoresCache(head))) return out;
  const platform = s.platform(head);
  let prev = head;
  let bytes = 0;
  while (out.length < MAX_CHAIN_STEPS) {
    if (prev.digest === g.result.digest) break;
    const consumers = s.consumers.get(prev.digest);
    if (!consumers || consumers.size !== 1) break;
    const [next] = consumers;
    const lo = next === undefined ? undefined : g.ops.get(next);
    if (!lo || !(lo.op.file || lo.op.exec)) break;
    if (!s.waiting(lo.digest) || s.platform(lo) !== platform) break;
    const inputs = lo.op.inputs ?? [];
    const chained = inputs.flatMap((inp, i) => (inp.digest === prev.digest ? [i] : []));
    if (chained.length !== 1) break;
    const chainedInput = chained[0]!;
    if (depSpecs(lo.op)[chainedInput]?.contentBased) break;
    if (!inputs.every((inp, i) => i === chainedInput || s.done(inp.digest ?? ''))) break;
    bytes += lo.bytes.length;
    if (bytes > MAX_CHAIN_BYTES) break;
    out.push({ lo, chainedInput });
    // A RUN ends a chain: nothing runs after it in the task, so a finished RUN is recorded as
    // the task ends and never runs again when a later step's worker or scheduler is lost.
    if (lo.op.exec) break;
    prev = lo;
  }
  return out;
}
