/**
 * Test support for the worker suites that run graphs (used by `*.test.ts` only; not built into
 * dist). The scheduler's Dispatcher is loaded at run time, so this package's build does not depend
 * on another service. The worker entry (`main.ts`) is bundled from source, so spawning it needs no
 * prior build.
 */
import { createHash, randomUUID } from 'node:crypto';
import { decodeTask, encodeTask } from '@kiln/bus';
import type { Bus, TaskInit, TaskProgress, TaskResult } from '@kiln/bus';
import { parseDefinition } from '@kiln/llb';
import { KilnError } from '@kiln/protocol';
import { bundleEntries } from '@kiln/testing';
import type { LoadedDefinition } from '@kiln/llb';
import type { NatsConnection } from '@nats-io/transport-node';
import type { RunTask, TaskOutcome } from '@kiln/bus';

/** The subset of the scheduler's Dispatcher these suites use. */
export interface DispatcherLike {
  readonly bus: Bus;
  submit(
    task: TaskInit,
    opts?: { preferredWorkers?: readonly string[]; onProgress?: (p: TaskProgress) => void },
  ): Promise<TaskResult>;
  liveWorkers(): { id: string; held: string[] }[];
  close(): Promise<void>;
}

interface DispatchModule {
  Dispatcher: {
    start(o: {
      nc: NatsConnection;
      affinityDelayMs?: number;
      heartbeatTimeoutMs?: number;
      maxAttempts?: number;
      monitorIntervalMs?: number;
    }): Promise<DispatcherLike>;
  };
}

const DISPATCH_MODULE = '../../../scheduler/src/dispatch/index.js';

export async function startDispatcher(nc: NatsConnection): Promise<DispatcherLike> {
  const m = (await import(/* @vite-ignore */ DISPATCH_MODULE)) as DispatchModule;
  return m.Dispatcher.start({
    nc,
    // The tests place tasks on chosen workers: a worker process just started on a loaded CI
    // machine may take a while to answer its first offer.
    affinityDelayMs: 2_000,
    heartbeatTimeoutMs: 1_500,
    maxAttempts: 3,
    monitorIntervalMs: 100,
  });
}

/** Bundles the worker entry into `dir` and returns the file to run with node. */
export async function bundleWorkerMain(dir: string): Promise<string> {
  const files = await bundleEntries(
    { 'kiln-worker-main': 'services/worker/src/node/main.ts' },
    dir,
  );
  return files['kiln-worker-main']!;
}

/** Results of the vertices submitted so far, by vertex digest. */
export type Results = Map<string, TaskResult>;

/**
 * Submits every vertex of `def` not in `results` yet, in order, as a scheduler would: inputs
 * resolved from the results of their producers, cache keys salted per run (the dispatcher
 * deduplicates by cache key). `place` picks the preferred worker of each vertex.
 */
export async function submitGraph(
  d: DispatcherLike,
  def: Uint8Array,
  o: {
    salt: string;
    results?: Results;
    place: (digest: string, def: LoadedDefinition) => string | undefined;
    onProgress?: (p: TaskProgress) => void;
    /** The tasks' platform (default linux/amd64). */
    arch?: string;
    /** The build's cache namespace (its tenant's), as the scheduler sets it. */
    cacheNamespace?: string;
  },
): Promise<{ results: Results; def: LoadedDefinition; result: TaskResult }> {
  const g = parseDefinition(def);
  const results = o.results ?? new Map<string, TaskResult>();
  for (const digest of g.order) {
    if (results.has(digest)) continue;
    const v = g.ops.get(digest)!;
    const inputs = (v.op.inputs ?? []).map((i) => {
      const out = results.get(i.digest ?? '')?.outputs[Number(i.index ?? 0)];
      if (!out) throw new Error(`no result for input ${i.digest ?? ''}`);
      return {
        resultId: out.resultId,
        layers: out.layers,
        holderWorker: results.get(i.digest ?? '')?.workerId ?? '',
      };
    });
    const worker = o.place(digest, g);
    const task: TaskInit = {
      taskId: randomUUID(),
      buildId: `build-${o.salt}`,
      vertexDigest: digest,
      op: v.bytes,
      ...(v.metadata ? { metadata: v.metadata } : {}),
      inputs,
      cacheKey: `sha256:${createHash('sha256').update(`${o.salt} ${digest}`).digest('hex')}`,
      platform: { OS: 'linux', Architecture: o.arch ?? 'amd64', Variant: '' },
      ...(o.cacheNamespace !== undefined ? { cacheNamespace: o.cacheNamespace } : {}),
    };
    results.set(
      digest,
      await d.submit(task, {
        ...(worker ? { preferredWorkers: [worker] } : {}),
        ...(o.onProgress ? { onProgress: o.onProgress } : {}),
      }),
    );
  }
  const result = results.get(g.result.digest);
  if (!result) throw new Error('the result vertex did not run');
  return { results, def: g, result };
}

/** The subset of a TaskRunner {@link runGraph} drives (its `run` and `snapshotOf`). */
export interface RunnerLike {
  run: RunTask;
  snapshotOf(resultId: string): string | undefined;
}

/**
 * Runs every vertex of `def` on one task runner, in order, as the scheduler would dispatch them
 * (inputs resolved from the results of their producers), and returns the committed snapshot of
 * the result. A failed task rejects with its typed error (code, message, details).
 */
export async function runGraph(
  runner: RunnerLike,
  def: Uint8Array,
  o: { salt?: string } = {},
): Promise<string | undefined> {
  const g = parseDefinition(def);
  const salt = o.salt ?? randomUUID();
  const outputs = new Map<string, NonNullable<TaskOutcome['outputs']>>();
  for (const digest of g.order) {
    const v = g.ops.get(digest)!;
    const inputs = (v.op.inputs ?? []).map((i) => {
      const out = outputs.get(i.digest ?? '')?.[Number(i.index ?? 0)];
      if (!out) throw new Error(`no result for input ${i.digest ?? ''}`);
      return { resultId: out.resultId, layers: out.layers };
    });
    const task = decodeTask(
      encodeTask({
        taskId: randomUUID(),
        buildId: `build-${salt}`,
        vertexDigest: digest,
        op: v.bytes,
        ...(v.metadata ? { metadata: v.metadata } : {}),
        inputs,
        cacheKey: `sha256:${createHash('sha256').update(`${salt} ${digest}`).digest('hex')}`,
        platform: { OS: 'linux', Architecture: 'amd64', Variant: '' },
      }),
    );
    const r = await runner.run(task, new AbortController().signal, () => {});
    if (r.error) {
      throw new KilnError(r.error.code ?? 'TASK_FAILED', r.error.message ?? '', {
        details: { digest },
      });
    }
    outputs.set(digest, r.outputs ?? []);
  }
  const id = outputs.get(g.result.digest)?.[g.result.index]?.resultId;
  if (!id) throw new Error('the result vertex has no output');
  return runner.snapshotOf(id);
}
