/**
 * The distributed solve of one loaded Definition: every vertex becomes a `workerpb.Task`
 * submitted through the Dispatcher as soon as its inputs are done, so independent branches run
 * concurrently (on as many workers as the farm has) and a vertex shared with another build runs
 * once (the Dispatcher dedups by the task's cache key, see fast-key.ts).
 *
 * Contract:
 * - The first failing vertex fails the solve with a {@link VertexFailedError} naming it; its
 *   dependents are never dispatched, and the build's other pending tasks are abandoned (tasks
 *   another build waits for go on: the Dispatcher cancels a task only when its last build left).
 * - Aborting `signal` cancels the same way and rejects with {@link BuildCanceledError}.
 * - The promise settles only after every submitted task has settled for this build, so nothing
 *   of a finished solve is left running on its behalf.
 * - Events (`onVertex`, `onProgress`) are emitted in causal order per vertex; this module does not
 *   log.
 */
import { randomUUID } from 'node:crypto';
import { Attr, SpanName, tracer } from '@kiln/common';
import { SpanStatusCode, context, trace } from '@opentelemetry/api';
import { INPUT_LOST_CODE, resultHasBlobs } from '@kiln/bus';
import type { TaskInit, TaskProgress, TaskResult } from '@kiln/bus';
import { CUSTOM_NAME, buildkitCacheMap, depSpecs, inputDigests, opKind } from '@kiln/llb';
import type { CacheNode } from '@kiln/remote-cache';
import type { LoadedDefinition, LoadedOp } from '@kiln/llb';
import {
  KilnError,
  formatPlatform,
  platformFromPb,
  platformToPb,
  reviveError,
  truncateMiddle,
  workerpb,
} from '@kiln/protocol';
import type { Platform, pb } from '@kiln/protocol';
import type { SubmitOptions } from '../dispatch/index.js';
import { BuildCanceledError, VertexFailedError } from './errors.js';
import type { ContentChecksums } from './content-checksums.js';
import { buildkitNodes, resultNodes } from './buildkit-nodes.js';
import { contentKeyedOp, fastKey, volatileSource } from './fast-key.js';
import { chainAfter, consumersOf } from './chain.js';
import type { ChainLink } from './chain.js';
import type { ContentDep } from './fast-key.js';

/** What the solver needs of the Dispatcher. */
export interface TaskSubmitter {
  submit(task: TaskInit, opts?: SubmitOptions): Promise<TaskResult>;
  /**
   * The result `holder` made for `cacheKey` is lost: the next submit of the key must run the
   * task again (Dispatcher.forgetResult). Without it, a lost input fails the build.
   */
  forgetResult?(cacheKey: string, holder: string): Promise<void>;
  /**
   * Records `result`, made by a step fused into another task, as the result of `task`
   * (Dispatcher.adopt). Without it nothing is fused: every vertex is a task of its own.
   */
  adopt?(task: TaskInit, result: TaskResult, opts?: SubmitOptions): Promise<TaskResult>;
}

/**
 * Asks a result's holder to make its layers blobs in the store (`kiln.materialize.<holder>`);
 * undefined when it cannot (gone, no answer, no longer holds it): the result is lost.
 */
export type Materializer = (
  holder: string,
  resultId: string,
) => Promise<NonNullable<OutputResult['layers']> | undefined>;

/** How many times one vertex is rerun because a result it needed was lost. */
export const MAX_RERUNS = 5;
/**
 * The wait before asking again when the rerun of a lost input answered with the same holder (the
 * farm's record still names it: a worker restarting on its state dir keeps what it held), by
 * round: 0.5 s doubling to 4 s, about 11 s over {@link MAX_RERUNS} rounds.
 */
export const sameHolderDelayMs = (round: number): number => Math.min(4_000, 500 * 2 ** round);

/** Waits {@link sameHolderDelayMs}(`round`), or until `signal` aborts (the caller checks it). */
export function sameHolderDelay(round: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(wake, sameHolderDelayMs(round));
    function wake(): void {
      clearTimeout(t);
      signal.removeEventListener('abort', wake);
      resolve();
    }
    signal.addEventListener('abort', wake, { once: true });
  });
}

export type OutputResult = TaskResult['outputs'][number];
type ResolvedInput = NonNullable<TaskInit['inputs']>[number];

/** A vertex as the build's progress shows it; every change emits the whole snapshot. */
export interface VertexSnapshot {
  digest: string;
  inputs: string[];
  name: string;
  cached: boolean;
  /** Unix time in ms; undefined until started. */
  startedAt?: number;
  completedAt?: number;
  error?: string;
  workerId?: string;
  cacheKey?: string;
}

export interface SolveOptions {
  submitter: TaskSubmitter;
  buildId: string;
  /** Platform of ops that name none (BuildKit: the build's default platform). */
  defaultPlatform: pb.IPlatform;
  sessionId?: string;
  /**
   * The tenant's cache namespace ('' or absent: shared): part of every cache key, and sent to
   * workers, who keep `RUN --mount=type=cache` directories per namespace.
   */
  cacheNamespace?: string;
  /** The tenant's RUN limits, sent in every task (not part of any key: they change no result). */
  limits?: { memoryBytes: number; pids: number; cpuShares: number; timeMs: number };
  /**
   * Selector-level content keys: asks the holder of an input read only through selectors for
   * the checksum of those paths (fast-key.ts). Without it, every input is keyed by its result id.
   */
  checksums?: ContentChecksums;
  /**
   * The content of a `local://` source as its client has it now (the digest of its synced
   * manifest), or undefined when it cannot say. A source it answers is keyed by that content
   * rather than by the build (fast-key.ts): an unchanged context is a cache hit, with no task.
   */
  localContent?: (op: pb.IOp) => Promise<string | undefined>;
  /**
   * Makes the result's blobs exist before the solve returns (its `layers` then all carry a
   * digest): for a solve whose caller reads the result from the store. A lost result reruns.
   */
  materialize?: Materializer;
  /**
   * Imported caches (`--cache-from`): asked, by the vertex's BuildKit cache nodes (one list per
   * output), before the vertex's inputs are even asked for (its nodes need only theirs, and the
   * results of inputs keyed by content); a result for every output answers the vertex (shown
   * CACHED) without running it or the inputs only it needed, as BuildKit's solver does: a
   * mode=min cache (results of the last step only) reruns nothing. Vertices so left out show
   * CACHED at the end and have nodes but no result. Its layers must be blobs in the store.
   * Not asked for a vertex marked ignoreCache (`--no-cache`).
   */
  importedCache?: (nodes: readonly (readonly CacheNode[])[]) => Promise<OutputResult[] | undefined>;
  /**
   * Also ask for BuildKit's contenthash of content-based inputs (`ContentDep.buildkitDigest`):
   * for builds that import or export a cache, whose content links must be BuildKit's.
   */
  buildkitChecksums?: boolean;
  /**
   * Fuse linear chains of file ops into one task (chain.ts); default true when the submitter
   * can `adopt`. Keys, records and results are the same either way.
   */
  fuse?: boolean;
  signal?: AbortSignal;
  onVertex?: (v: VertexSnapshot) => void;
  onProgress?: (digest: string, p: TaskProgress) => void;
}

export interface SolveResult {
  /** The result vertex's output the Definition evaluates to. */
  result: OutputResult;
  /** Worker that produced (and holds) it. */
  workerId: string;
  /** The vertex output the result is (the Definition's terminal input). */
  resultRef: { digest: string; index: number };
  /** Every vertex's task result, by digest. */
  vertices: ReadonlyMap<string, TaskResult>;
  /**
   * Every vertex's BuildKit cache nodes, by digest, one list per output (empty where BuildKit's
   * key cannot be made): what a cache export writes.
   */
  cacheNodes: ReadonlyMap<string, readonly (readonly CacheNode[])[]>;
}

/** What a vertex's keys are made of, before any result of its own. */
interface VertexKeys {
  platform: Platform;
  /** Makes the key private to this build (ignoreCache, a volatile source), or a local source's content. */
  nonce: string | undefined;
  /** A local source keyed by its content (fast-key.ts contentKeyedOp). */
  contentKeyed: boolean;
  content: (ContentDep | undefined)[] | undefined;
  /** BuildKit's cache nodes, per output. */
  pending: CacheNode[][];
}

type ChainStepResult = TaskResult['chain'][number];

/** A step a worker ran fused after another vertex's task, waiting for its own attempt. */
interface FusedStep {
  /** The result ids of its inputs it ran on, in input order. */
  inputIds: string[];
  step: ChainStepResult;
  workerId: string;
}

const nanosToMs = (v: ChainStepResult['startedUnixNano']): number =>
  Math.floor(Number(v ?? 0) / 1e6);

/** A vertex not run because an input failed or the build stopped. */
class Skipped extends Error {}

/** The input a task error names as lost (`TASK_INPUT_LOST`): its result id and holder. */
function lostInput(e: unknown): { resultId: string; holder: string } | undefined {
  if (!(e instanceof KilnError) || e.code !== INPUT_LOST_CODE) return undefined;
  const { resultId, holder } = e.details;
  if (typeof resultId !== 'string' || !resultId) return undefined;
  return { resultId, holder: typeof holder === 'string' ? holder : '' };
}

/**
 * A vertex name's bound: names travel in every progress frame, log line and task; a longer one
 * (a megabyte `llb.customname`) is cut with a marker, here and in the task's metadata.
 */
export const MAX_VERTEX_NAME = 4096;
/** The bound of each other description value a task carries to its worker. */
const MAX_DESCRIPTION_VALUE = 16 * 1024;

/** The name BuildKit's progress shows for a vertex, at most {@link MAX_VERTEX_NAME} long. */
export function vertexName(lo: LoadedOp): string {
  return truncateMiddle(fullVertexName(lo), MAX_VERTEX_NAME);
}

function fullVertexName(lo: LoadedOp): string {
  const custom = lo.metadata?.description?.[CUSTOM_NAME];
  if (custom) return custom;
  const op = lo.op;
  if (op.exec) return (op.exec.meta?.args ?? []).join(' ');
  if (op.source) return op.source.identifier ?? 'source';
  return opKind(op) ?? 'op';
}

/**
 * The op's metadata as a task carries it: description values cut as the names are (metadata is
 * not part of the vertex digest nor of the cache key, so this changes no result).
 */
function taskMetadata(m: pb.IOpMetadata | undefined): pb.IOpMetadata {
  const desc = m?.description;
  if (!m || !desc) return m ?? {};
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(desc))
    out[k] = truncateMiddle(v, k === CUSTOM_NAME ? MAX_VERTEX_NAME : MAX_DESCRIPTION_VALUE);
  return { ...m, description: out };
}

/** The op's platform, else the build's default. */
function platformOf(op: pb.IOp, fallback: pb.IPlatform): Platform {
  const p = platformFromPb(op.platform) ?? platformFromPb(fallback);
  if (p === undefined) throw new KilnError('SOLVE_NO_PLATFORM', 'the build has no platform');
  return p;
}

/**
 * What a layer with no blob yet weighs in placement: elsewhere it costs its holder a compression
 * and an upload before the fetch, so its holder comes first whatever the uploaded bytes.
 */
const UNUPLOADED_LAYER_WEIGHT = 2 ** 40;

/**
 * The worker holding most input bytes (each input counts one byte more, so empty ones count;
 * layers not uploaded yet count most).
 */
function preferredWorker(inputs: readonly ResolvedInput[]): string | undefined {
  const weight = new Map<string, number>();
  for (const i of inputs) {
    if (!i.holderWorker) continue;
    let bytes = 1;
    for (const l of i.layers ?? [])
      bytes += l.digest ? Number(l.size ?? 0) : UNUPLOADED_LAYER_WEIGHT;
    weight.set(i.holderWorker, (weight.get(i.holderWorker) ?? 0) + bytes);
  }
  let best: string | undefined;
  let max = -1;
  for (const [w, n] of weight) if (n > max) [best, max] = [w, n];
  return best;
}

const num = (v: number | { toNumber(): number } | null | undefined): number =>
  v == null ? 0 : typeof v === 'number' ? v : v.toNumber();

/**
 * Per input of `op`: the content checksum of the paths it reads there, for inputs read only
 * through selectors whose holder answers (concurrently); undefined for the others.
 */
async function contentDeps(
  op: pb.IOp,
  inputs: readonly ResolvedInput[],
  checksums: ContentChecksums,
  buildkit: boolean,
): Promise<(ContentDep | undefined)[]> {
  const specs = depSpecs(op);
  return Promise.all(
    inputs.map(async (input, i): Promise<ContentDep | undefined> => {
      const spec = specs[i];
      if (!spec?.contentBased || !input.holderWorker || !input.resultId) return undefined;
      const [digest, bk] = await Promise.all([
        checksums.checksum(input.holderWorker, input.resultId, spec),
        buildkit
          ? checksums.checksum(input.holderWorker, input.resultId, {
              ...spec,
              algorithm: 'buildkit',
            })
          : undefined,
      ]);
      if (digest === undefined) return undefined;
      return { digest, selectors: spec.selectors, ...(bk ? { buildkitDigest: bk } : {}) };
    }),
  );
}

/**
 * The key part of a local source whose content is known: its manifest's digest, tagged so that
 * it never meets a build id.
 */
async function localNonce(
  op: pb.IOp,
  localContent: SolveOptions['localContent'],
): Promise<string | undefined> {
  if (!localContent || !op.source?.identifier?.startsWith('local://')) return undefined;
  const digest = await localContent(op);
  return digest ? `local-content ${digest}` : undefined;
}

/** A fused step's result as the result of its own task `taskId`. */
function stepResult(f: FusedStep, taskId: string): TaskResult {
  return workerpb.TaskResult.create({
    taskId,
    workerId: f.workerId,
    outputs: f.step.outputs,
    startedUnixNano: f.step.startedUnixNano,
    completedUnixNano: f.step.completedUnixNano,
  });
}

/** A fused step's failure as the error its own task would have failed with. */
function stepError(step: ChainStepResult, task: TaskInit, digest: string): KilnError {
  const err = step.error!;
  return reviveError(
    err.code || 'TASK_FAILED',
    err.message || 'task failed',
    {
      ...err.details,
      cacheKey: task.cacheKey ?? '',
      taskId: task.taskId ?? '',
      vertexDigest: digest,
      attempts: 1,
      ...(err.exitCode ? { exitCode: err.exitCode } : {}),
    },
    err.retryable ?? false,
  );
}

export async function solveGraph(g: LoadedDefinition, o: SolveOptions): Promise<SolveResult> {
  const ac = new AbortController();
  const onAbort = (): void => ac.abort();
  o.signal?.addEventListener('abort', onAbort, { once: true });
  if (o.signal?.aborted) ac.abort();
  const results = new Map<string, Promise<TaskResult>>();
  const done = new Map<string, TaskResult>();
  let firstError: KilnError | undefined;
  // Vertex spans are children of the caller's span (the build's), if any.
  const parent = context.active();

  /** BuildKit cache nodes of the vertices done, by digest, per output. */
  const nodes = new Map<string, CacheNode[][]>();
  /** Cache keys of the vertices submitted, by digest (to forget a lost result). */
  const keys = new Map<string, string>();
  /** Every vertex's keys, by digest, once asked for (keysOf). */
  const keyed = new Map<string, Promise<VertexKeys>>();
  /** Reruns of lost results, by the result lost (one rerun however many found it lost). */
  const reruns = new Map<TaskResult, Promise<TaskResult>>();
  /** Fusing (chain.ts): consumers of each vertex, the vertices being attempted, fused steps. */
  const fuse = (o.fuse ?? true) && o.submitter.adopt !== undefined;
  const consumers = fuse ? consumersOf(g) : new Map<string, Set<string>>();
  const attempting = new Set<string>();
  const planned = new Set<string>();
  const fused = new Map<string, FusedStep>();
  const chainState = {
    consumers,
    done: (d: string) => done.has(d),
    waiting: (d: string) =>
      results.has(d) && !done.has(d) && !attempting.has(d) && !planned.has(d) && !fused.has(d),
    platform: (lo: LoadedOp) => formatPlatform(platformOf(lo.op, o.defaultPlatform)),
    ignoresCache: (lo: LoadedOp) => Boolean(lo.metadata?.ignoreCache),
  };

  /** Runs vertex `digest` again: its result `lost` is gone with its holder. */
  const rerun = (digest: string, lost: TaskResult): Promise<TaskResult> => {
    let p = reruns.get(lost);
    if (!p) {
      p = (async () => {
        const key = keys.get(digest);
        if (key && o.submitter.forgetResult) await o.submitter.forgetResult(key, lost.workerId);
        // `done` keeps the lost result until the rerun replaces it: a vertex built on it
        // meanwhile finds it lost too, and waits for this same rerun.
        const again = run(g.ops.get(digest)!);
        results.set(digest, again);
        return again;
      })();
      reruns.set(lost, p);
    }
    return p;
  };

  /**
   * Reruns the producer of the input of `lo` that was lost (its result id, held by `holder`);
   * false if there is none. An input rerun meanwhile (another holder now) is just used.
   */
  const rerunInput = async (
    lo: LoadedOp,
    lostInput: { resultId: string; holder: string },
    round: number,
  ): Promise<boolean> => {
    if (!o.submitter.forgetResult) return false;
    const found = (lo.op.inputs ?? []).find(
      (inp) => done.get(inp.digest ?? '')?.outputs[num(inp.index)]?.resultId === lostInput.resultId,
    );
    const digest = found?.digest ?? '';
    const current = done.get(digest);
    if (!current) return false;
    if (lostInput.holder && current.workerId !== lostInput.holder) return true;
    await rerun(digest, current);
    // Answered by the same holder again (its record was not given up: the holder is back, or
    // its blobs were recorded meanwhile): asking at once would find it away again.
    if (lostInput.holder && done.get(digest)?.workerId === lostInput.holder)
      await sameHolderDelay(round, ac.signal);
    return true;
  };

  /** A vertex's result, its run started on first demand (`results` holds it). */
  const need = (d: string): Promise<TaskResult> => {
    let p = results.get(d);
    if (!p) {
      p = run(g.ops.get(d)!);
      p.catch(() => undefined); // observed through allSettled below
      results.set(d, p);
    }
    return p;
  };
  /** An input's result; its failure skips the vertex waiting for it. */
  const input = (d: string): Promise<TaskResult> =>
    need(d).catch(() => {
      throw new Skipped();
    });

  const resolveInput = (inp: pb.IInput): ResolvedInput => {
    const r = done.get(inp.digest ?? '');
    const out = r?.outputs[num(inp.index)];
    if (!r || !out)
      throw new KilnError(
        'SOLVE_MISSING_OUTPUT',
        `input ${inp.digest ?? ''} has no output ${num(inp.index)}`,
      );
    return { resultId: out.resultId, layers: out.layers, holderWorker: r.workerId };
  };

  /**
   * The vertex's keys that need no result of its own: its BuildKit cache nodes need its inputs'
   * nodes and the results of the inputs keyed by content only (computed once per vertex).
   */
  const keysOf = (lo: LoadedOp): Promise<VertexKeys> => {
    let p = keyed.get(lo.digest);
    if (!p) {
      p = (async (): Promise<VertexKeys> => {
        const platform = platformOf(lo.op, o.defaultPlatform);
        const local = lo.metadata?.ignoreCache
          ? undefined
          : await localNonce(lo.op, o.localContent);
        const nonce =
          local ?? (lo.metadata?.ignoreCache || volatileSource(lo.op) ? o.buildId : undefined);
        const ins = lo.op.inputs ?? [];
        let content: (ContentDep | undefined)[] | undefined;
        // A key private to this build gains nothing from content checksums.
        if (o.checksums && nonce === undefined) {
          const specs = depSpecs(lo.op);
          const byContent = ins.map((inp, i) => (specs[i]?.contentBased ? inp : undefined));
          await Promise.all(byContent.flatMap((inp) => (inp ? [input(inp.digest ?? '')] : [])));
          content = await contentDeps(
            lo.op,
            byContent.map((inp) => (inp ? resolveInput(inp) : {})),
            o.checksums,
            o.buildkitChecksums ?? false,
          );
        }
        const inputNodes = new Map<string, readonly (readonly CacheNode[])[]>();
        if (buildkitCacheMap(lo.op, platformToPb(platform)))
          await Promise.all(inputDigests(lo).map(async (d) => inputNodes.set(d, await nodesOf(d))));
        const pending = buildkitNodes(lo.op, platformToPb(platform), inputNodes, content);
        return { platform, nonce, contentKeyed: local !== undefined, content, pending };
      })();
      p.catch(() => undefined); // observed by its callers and through allSettled below
      keyed.set(lo.digest, p);
    }
    return p;
  };
  /** A vertex's BuildKit nodes; an image source's only with its result (it adds its config key). */
  const nodesOf = async (d: string): Promise<readonly (readonly CacheNode[])[]> => {
    const lo = g.ops.get(d)!;
    if (!lo.op.source?.identifier?.startsWith('docker-image://')) return (await keysOf(lo)).pending;
    await input(d);
    return nodes.get(d) ?? [];
  };

  /** Fails the build with vertex `lo`'s error (the first such error wins). */
  const failVertex = (lo: LoadedOp, snap: VertexSnapshot, e: unknown): Error => {
    if (e instanceof Skipped) return e;
    const err = new VertexFailedError(lo.digest, snap.name, e);
    firstError ??= err;
    ac.abort();
    o.onVertex?.({ ...snap, error: err.message });
    return err;
  };

  /** The vertex answered by an import from its keys alone, or undefined (a miss). */
  const fromImport = async (
    lo: LoadedOp,
    name: string,
    deps: string[],
  ): Promise<TaskResult | undefined> => {
    const lookup = o.importedCache;
    if (!lookup || lo.metadata?.ignoreCache) return undefined;
    const snap: VertexSnapshot = { digest: lo.digest, inputs: deps, name, cached: true };
    let outputs: OutputResult[] | undefined;
    let k: VertexKeys;
    try {
      k = await keysOf(lo);
      if (ac.signal.aborted) throw new Skipped();
      if (!k.pending.some((n) => n.length > 0)) return undefined;
      outputs = await lookup(k.pending);
    } catch (e) {
      throw failVertex(lo, snap, e);
    }
    if (!outputs) return undefined;
    const r = workerpb.TaskResult.create({
      taskId: randomUUID(),
      workerId: '',
      outputs,
      cached: true,
    });
    done.set(lo.digest, r);
    nodes.set(lo.digest, resultNodes(lo.op, k.pending, r));
    const now = Date.now();
    tracer()
      .startSpan(
        SpanName.vertex,
        {
          attributes: {
            [Attr.buildId]: o.buildId,
            [Attr.vertexDigest]: lo.digest,
            [Attr.vertexName]: name,
            [Attr.opKind]: opKind(lo.op) ?? '',
            [Attr.cacheHit]: true,
          },
        },
        parent,
      )
      .end();
    o.onVertex?.({ ...snap, startedAt: now, completedAt: now });
    return r;
  };

  const run = async (lo: LoadedOp): Promise<TaskResult> => {
    const deps = inputDigests(lo);
    const name = vertexName(lo);
    const imported = await fromImport(lo, name, deps);
    if (imported) return imported;
    await Promise.all(deps.map(input));
    if (ac.signal.aborted) throw new Skipped();
    for (let round = 0; ; round++) {
      const r = await attempt(lo, name, deps);
      if ('result' in r) return r.result;
      // An input was lost with its holder: run its producer again, then this vertex.
      if (round >= MAX_RERUNS || ac.signal.aborted) throw r.fail();
      let rerunning = false;
      try {
        rerunning = await rerunInput(lo, r.lost, round);
      } catch {
        // The producer's rerun failed: its own error fails the build.
      }
      if (ac.signal.aborted) throw new Skipped();
      if (!rerunning) throw r.fail();
    }
  };

  /** One submit of a vertex: its result, or the result id of a lost input (and how to fail). */
  const attempt = async (
    lo: LoadedOp,
    name: string,
    deps: string[],
  ): ReturnType<typeof attemptOnce> => {
    attempting.add(lo.digest);
    try {
      return await attemptOnce(lo, name, deps);
    } finally {
      attempting.delete(lo.digest);
    }
  };

  /** The chain step fused after `links` ran as: the step's result with the ids it ran on. */
  const keepFused = (links: readonly ChainLink[], r: TaskResult): void => {
    let prev = r.outputs;
    for (const [k, link] of links.entries()) {
      const step = r.chain[k];
      if (!step || step.vertexDigest !== link.lo.digest) return;
      const inputIds = (link.lo.op.inputs ?? []).map((inp, i) =>
        i === link.chainedInput
          ? (prev[num(inp.index)]?.resultId ?? '')
          : (done.get(inp.digest ?? '')?.outputs[num(inp.index)]?.resultId ?? ''),
      );
      fused.set(link.lo.digest, { inputIds, step, workerId: r.workerId });
      if (step.error) return;
      prev = step.outputs ?? [];
    }
  };

  const attemptOnce = async (
    lo: LoadedOp,
    name: string,
    deps: string[],
  ): Promise<
    { result: TaskResult } | { lost: { resultId: string; holder: string }; fail: () => Error }
  > => {
    const snap: VertexSnapshot = { digest: lo.digest, inputs: deps, name, cached: false };
    const taskId = randomUUID();
    let task: TaskInit;
    let pending: CacheNode[][] = [];
    try {
      const inputs = (lo.op.inputs ?? []).map(resolveInput);
      const k = await keysOf(lo);
      if (ac.signal.aborted) throw new Skipped();
      const cacheKey = fastKey({
        op: k.contentKeyed ? contentKeyedOp(lo.op) : lo.op,
        platform: formatPlatform(k.platform),
        inputResultIds: inputs.map((i) => i.resultId ?? ''),
        ...(k.content ? { contentDeps: k.content } : {}),
        nonce: k.nonce,
        namespace: o.cacheNamespace ?? '',
      });
      const preferred = preferredWorker(inputs);
      task = {
        taskId,
        buildId: o.buildId,
        vertexDigest: lo.digest,
        op: lo.bytes,
        metadata: taskMetadata(lo.metadata),
        inputs,
        cacheKey,
        platform: platformToPb(k.platform),
        sessionId: o.sessionId ?? '',
        preferredWorker: preferred ?? '',
        cacheNamespace: o.cacheNamespace ?? '',
        ...(o.limits ? { limits: o.limits } : {}),
      };
      snap.cacheKey = cacheKey;
      keys.set(lo.digest, cacheKey);
      pending = k.pending;
    } catch (e) {
      throw failVertex(lo, snap, e);
    }
    // Run already, fused after the vertex before it, on the inputs it has now: recorded under
    // its own key. A step that failed retryably (a lost input) runs again alone.
    const pre = fused.get(lo.digest);
    fused.delete(lo.digest);
    const ran =
      pre &&
      (!pre.step.error || !pre.step.error.retryable) &&
      pre.inputIds.length === (task.inputs ?? []).length &&
      pre.inputIds.every((id, i) => id === task.inputs?.[i]?.resultId)
        ? pre
        : undefined;
    // Otherwise the steps that can run right after it on the same worker go with it.
    const links = !ran && fuse ? chainAfter(g, lo, chainState) : [];
    const shown = new Set<string>();
    if (links.length > 0) {
      task.chain = links.map((l) => ({
        vertexDigest: l.lo.digest,
        op: l.lo.bytes,
        metadata: taskMetadata(l.lo.metadata),
        inputs: (l.lo.op.inputs ?? []).map((inp, i) =>
          i === l.chainedInput ? {} : resolveInput(inp),
        ),
        chainedInput: l.chainedInput,
      }));
      for (const l of links) {
        planned.add(l.lo.digest);
        void keysOf(l.lo); // their content checksums meanwhile
      }
    }
    snap.startedAt = ran ? nanosToMs(ran.step.startedUnixNano) || Date.now() : Date.now();
    o.onVertex?.({ ...snap });
    const span = tracer().startSpan(
      SpanName.vertex,
      {
        attributes: {
          [Attr.buildId]: o.buildId,
          [Attr.vertexDigest]: lo.digest,
          [Attr.vertexName]: name,
          [Attr.cacheKey]: task.cacheKey ?? '',
          [Attr.opKind]: opKind(lo.op) ?? '',
        },
      },
      parent,
    );
    try {
      const submitOpts: SubmitOptions = {
        buildId: o.buildId,
        signal: ac.signal,
        preferredWorkers: task.preferredWorker ? [task.preferredWorker] : [],
        onProgress: (p) => {
          const step = p.vertex ? links.find((l) => l.lo.digest === p.vertex) : undefined;
          if (step && !shown.has(step.lo.digest)) {
            // A fused step's first output: it runs now (it is recorded once the chain is done).
            shown.add(step.lo.digest);
            o.onVertex?.({
              digest: step.lo.digest,
              inputs: inputDigests(step.lo),
              name: vertexName(step.lo),
              cached: false,
              startedAt: Date.now(),
            });
          }
          o.onProgress?.(step ? step.lo.digest : lo.digest, p);
        },
      };
      if (ran?.step.error) throw stepError(ran.step, task, lo.digest);
      // Submitted under the vertex span: the dispatcher sends its context to the worker.
      const r = await context.with(trace.setSpan(parent, span), () =>
        ran && o.submitter.adopt
          ? o.submitter.adopt(task, stepResult(ran, taskId), submitOpts)
          : o.submitter.submit(task, submitOpts),
      );
      for (const l of links) planned.delete(l.lo.digest);
      if (r.taskId === taskId) keepFused(links, r);
      done.set(lo.digest, r);
      nodes.set(lo.digest, resultNodes(lo.op, pending, r));
      // Answered by a run another build (or an earlier one) made, or by the worker's cache.
      snap.cached = r.cached || r.taskId !== taskId;
      snap.completedAt =
        ran && !snap.cached ? nanosToMs(ran.step.completedUnixNano) || Date.now() : Date.now();
      snap.workerId = r.workerId;
      span.setAttributes({ [Attr.workerId]: r.workerId, [Attr.cacheHit]: snap.cached });
      span.end();
      o.onVertex?.({ ...snap });
      return { result: r };
    } catch (e) {
      for (const l of links) planned.delete(l.lo.digest);
      snap.completedAt = Date.now();
      if (ac.signal.aborted) {
        span.end();
        o.onVertex?.({ ...snap, error: 'canceled' });
        throw new Skipped();
      }
      const fail = (): Error => {
        const err = new VertexFailedError(lo.digest, name, e);
        span.recordException(err);
        span.setStatus({ code: SpanStatusCode.ERROR, message: err.message });
        span.end();
        firstError ??= err;
        ac.abort();
        o.onVertex?.({ ...snap, error: err.message });
        return err;
      };
      const lost = lostInput(e);
      if (lost === undefined) throw fail();
      span.end();
      return { lost, fail };
    }
  };

  if (o.importedCache) {
    // Lazily from the result, as BuildKit: a vertex an import answers never asks for its inputs.
    // Vertices the result does not depend on run as before.
    const wanted = new Set<string>();
    const stack = [g.result.digest];
    for (let d = stack.pop(); d !== undefined; d = stack.pop())
      if (!wanted.has(d)) {
        wanted.add(d);
        stack.push(...inputDigests(g.ops.get(d)!));
      }
    void need(g.result.digest);
    for (const d of g.order) if (!wanted.has(d)) void need(d);
  } else for (const d of g.order) void need(d);
  // Everything demanded meanwhile (inputs, reruns) settles too.
  const settled = new Set<Promise<unknown>>();
  for (;;) {
    const fresh = [...results.values(), ...keyed.values()].filter((p) => !settled.has(p));
    if (fresh.length === 0) break;
    for (const p of fresh) settled.add(p);
    await Promise.allSettled(fresh);
  }
  o.signal?.removeEventListener('abort', onAbort);
  if (firstError) throw firstError;
  if (o.signal?.aborted) throw new BuildCanceledError(o.buildId);
  // The vertices an import made unnecessary: CACHED, as BuildKit shows them, with their nodes.
  for (const d of g.order) {
    const k = keyed.get(d);
    if (done.has(d) || !k) continue;
    const lo = g.ops.get(d)!;
    nodes.set(d, (await k).pending);
    const now = Date.now();
    o.onVertex?.({
      digest: d,
      inputs: inputDigests(lo),
      name: vertexName(lo),
      cached: true,
      startedAt: now,
      completedAt: now,
    });
  }
  const resultName = vertexName(g.ops.get(g.result.digest)!);
  for (let round = 0; ; round++) {
    const r = done.get(g.result.digest);
    const out = r?.outputs[g.result.index];
    if (!r || !out) {
      throw new VertexFailedError(
        g.result.digest,
        resultName,
        new KilnError('SOLVE_MISSING_OUTPUT', `no output ${g.result.index}`),
      );
    }
    if (!o.materialize || resultHasBlobs([out]))
      return {
        result: out,
        workerId: r.workerId,
        vertices: done,
        cacheNodes: nodes,
        resultRef: g.result,
      };
    const layers = await o.materialize(r.workerId, out.resultId ?? '');
    if (o.signal?.aborted) throw new BuildCanceledError(o.buildId);
    if (layers) {
      const made = workerpb.OutputResult.create({ resultId: out.resultId, layers });
      return {
        result: made,
        workerId: r.workerId,
        vertices: done,
        cacheNodes: nodes,
        resultRef: g.result,
      };
    }
    if (round >= MAX_RERUNS || !o.submitter.forgetResult) {
      throw new VertexFailedError(
        g.result.digest,
        resultName,
        new KilnError('TASK_RESULT_LOST', `the result's holder ${r.workerId} no longer has it`, {
          retryable: true,
          details: { resultId: out.resultId ?? '', holder: r.workerId },
        }),
      );
    }
    // Lost with its holder: run the result vertex again (its inputs as they are, or rerun too).
    const again = rerun(g.result.digest, r);
    await Promise.allSettled([again]);
    await Promise.allSettled(results.values());
    // Set by the rerun (TypeScript narrowed it to undefined above).
    const failed = firstError as KilnError | undefined;
    if (failed) throw failed;
    if (o.signal?.aborted) throw new BuildCanceledError(o.buildId);
  }
}
