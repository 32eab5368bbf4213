// Chains of file ops fused into one task (chain.ts), on the real farm: nats-server, the
// Dispatcher, one worker process (the worker service's own entry, bundled from source: real
// overlay snapshots, crun, the harness's fixture image) and solveGraph. What is checked: the
// chain is dispatched once and every step gets its own done record under the key it would have
// had alone, with the result it would have made alone; a failing step fails as itself and the
// steps before it stay cached; a chain whose first steps are cached fuses the rest.
import { join } from 'node:path';
import { getRecord, decodeResult, fromBase64, taskKey } from '@kiln/bus';
import { LinuxAmd64, copy, image, marshal, mkdir, mkfile, parseDefinition, rm } from '@kiln/llb';
import type { State } from '@kiln/llb';
import { KilnError, platformToPb } from '@kiln/protocol';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Dispatcher } from '../dispatch/index.js';
import type { DispatchEvent } from '../dispatch/events.js';
import { bundleWorkerMain, spawnWorkerNode } from '../test-support/workers.js';
import type { ManagedProcess } from '@kiln/common';
import { makeTempDir, startNats, waitFor } from '@kiln/testing';
import type { NatsServerHandle } from '@kiln/testing';
import { solveGraph } from './solve.js';
import type { SolveResult, VertexSnapshot } from './solve.js';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE ?? '';
const WORKER = 'fuse-w1';

let tmp: { dir: string; remove: () => void };
let nats: NatsServerHandle;
let nc: NatsConnection;
let dispatcher: Dispatcher;
let worker: ManagedProcess;
let workerMain: string;
const events: DispatchEvent[] = [];

const startWorker = (): Promise<ManagedProcess> =>
  spawnWorkerNode(workerMain, nats.url, {
    id: WORKER,
    stateDir: join(tmp.dir, WORKER),
    storeDir: join(tmp.dir, 'store'),
    registered: (w) => dispatcher.liveWorkers().some((x) => x.id === w),
  });

beforeAll(async () => {
  if (!fixture) throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through vitest');
  tmp = makeTempDir('scheduler-fuse');
  const [n, main] = await Promise.all([startNats(), bundleWorkerMain(tmp.dir)]);
  nats = n;
  nc = await connect({ servers: nats.url, maxReconnectAttempts: -1 });
  dispatcher = await Dispatcher.start({
    nc,
    affinityDelayMs: 100,
    monitorIntervalMs: 100,
    onEvent: (e) => events.push(e),
  });
  workerMain = main;
  worker = await startWorker();
});

afterAll(async () => {
  await worker?.stop(5_000);
  await dispatcher?.close();
  await nc?.close();
  await nats?.stop();
  tmp?.remove();
});

const salt = (): string => Math.random().toString(36).slice(2);
const sh = (st: State, script: string): State => st.run({ args: ['/bin/sh', '-c', script] }).root();

interface Solved {
  res: SolveResult;
  /** The last snapshot of every vertex, by digest. */
  vertices: Map<string, VertexSnapshot>;
  /** Tasks dispatched (distinct task ids) and steps adopted, by cache key. */
  dispatched: Set<string>;
  adopted: Set<string>;
}

/** Output lines of the last solve, by vertex digest. */
const lines = new Map<string, string[]>();

async function solve(st: State, namespace: string, fuse = true): Promise<Solved> {
  const g = parseDefinition(marshal(st, { platform: LinuxAmd64 }).toProto());
  const vertices = new Map<string, VertexSnapshot>();
  lines.clear();
  const from = events.length;
  const buildId = `fuse-${salt()}`;
  try {
    const res = await solveGraph(g, {
      submitter: dispatcher,
      buildId,
      defaultPlatform: platformToPb(LinuxAmd64),
      cacheNamespace: namespace,
      fuse,
      onVertex: (v) => vertices.set(v.digest, v),
      onProgress: (d, p) => lines.set(d, [...(lines.get(d) ?? []), ...(p.lines ?? [])]),
    });
    return { res, vertices, ...keysOf(from) };
  } catch (err) {
    throw Object.assign(err as Error, { solved: { vertices, ...keysOf(from) } });
  }
}

function keysOf(from: number): { dispatched: Set<string>; adopted: Set<string> } {
  const dispatched = new Set<string>();
  const adopted = new Set<string>();
  for (const e of events.slice(from)) {
    if (e.type === 'dispatched') dispatched.add(e.cacheKey);
    if (e.type === 'adopted') adopted.add(e.cacheKey);
  }
  return { dispatched, adopted };
}

/** The digests of the file ops of `st`'s graph, in order. */
function fileOps(st: State): string[] {
  const g = parseDefinition(marshal(st, { platform: LinuxAmd64 }).toProto());
  return g.order.filter((d) => g.ops.get(d)!.op.file);
}

async function recordOf(
  cacheKey: string,
): Promise<{ state: string; resultId: string; holder?: string }> {
  const s = await getRecord(dispatcher.bus.tasks, taskKey(cacheKey));
  if (!s) throw new Error(`no record of ${cacheKey}`);
  const r = s.record.result ? decodeResult(fromBase64(s.record.result)) : undefined;
  return {
    state: s.record.state,
    resultId: r?.outputs[0]?.resultId ?? '',
    ...(s.record.holder ? { holder: s.record.holder } : {}),
  };
}

describe('fused chains of file ops', () => {
  it('run as one task, each step recorded under its own key', async () => {
    const tag = salt();
    const base = image(fixture);
    const c1 = base.file(mkdir('/fz', 0o755));
    const c2 = c1.file(mkfile('/fz/a', 0o644, `A ${tag}\n`));
    const c3 = c2.file(mkfile('/fz/b', 0o644, `B ${tag}\n`));
    const c4 = c3.file(rm('/fz/a'));
    const end = sh(c4, `test ! -e /fz/a && test "$(cat /fz/b)" = "B ${tag}"`);
    const files = fileOps(end);
    expect(files).toHaveLength(4);

    const fused = await solve(end, `f-${tag}`);
    const keys = files.map((d) => fused.vertices.get(d)?.cacheKey ?? '');
    // The first file op is dispatched (not after the image source: a tag is resolved in every
    // build), the three steps after it with it: they are not dispatched, they are adopted.
    expect(fused.dispatched.has(keys[0]!)).toBe(true);
    for (const k of keys.slice(1)) {
      expect(fused.dispatched.has(k)).toBe(false);
      expect(fused.adopted.has(k)).toBe(true);
    }
    for (const [i, d] of files.entries()) {
      const v = fused.vertices.get(d)!;
      expect(v.cached).toBe(false);
      expect(v.completedAt).toBeGreaterThanOrEqual(v.startedAt ?? Infinity);
      const rec = await recordOf(keys[i]!);
      expect(rec).toEqual({
        state: 'done',
        resultId: fused.res.vertices.get(d)?.outputs[0]?.resultId,
        holder: WORKER,
      });
    }

    // Alone (another namespace: nothing cached), every step is a task of its own.
    const alone = await solve(end, `a-${tag}`, false);
    expect(alone.adopted.size).toBe(0);
    for (const d of files)
      expect(alone.dispatched.has(alone.vertices.get(d)?.cacheKey ?? '')).toBe(true);

    // Again: every step is a cache hit on the records the fused run left, under the same keys.
    const again = await solve(end, `f-${tag}`);
    for (const [i, d] of files.entries()) {
      expect(again.vertices.get(d)).toMatchObject({ cached: true, cacheKey: keys[i] });
      expect(again.dispatched.has(keys[i]!)).toBe(false);
    }
    expect(again.adopted.size).toBe(0);
  });

  it('a fused step makes the result it makes alone (files with fixed times: reproducible layers)', async () => {
    const tag = salt();
    const t = new Date('2024-01-02T03:04:05Z');
    const root = image(fixture).file(mkfile(`/fa-${tag}`, 0o644, 'a\n', { createdTime: t }));
    const st = root
      .file(mkfile(`/fb-${tag}`, 0o600, 'b\n', { createdTime: t }))
      .file(mkfile(`/fc-${tag}`, 0o640, 'c\n', { createdTime: t }));
    const files = fileOps(st);
    const fused = await solve(st, `rf-${tag}`);
    const alone = await solve(st, `ra-${tag}`, false);
    expect(fused.adopted.size).toBe(2);
    expect(alone.adopted.size).toBe(0);
    for (const d of files)
      expect(fused.res.vertices.get(d)?.outputs[0]?.resultId).toBe(
        alone.res.vertices.get(d)?.outputs[0]?.resultId,
      );
  });

  it('a failing step fails as itself; the steps before it keep their records', async () => {
    const tag = salt();
    const base = image(fixture);
    const m1 = base.file(mkdir('/m', 0o755));
    const m2 = m1.file(mkfile('/m/x', 0o644, `X ${tag}\n`));
    const m3 = m2.file(copy(base, `/missing-${tag}`, '/m/'));
    const m4 = m3.file(mkfile('/m/y', 0o644, 'Y\n'));
    const [d1, d2, d3, d4] = fileOps(m4);

    const err = await solve(m4, `m-${tag}`).then(
      () => undefined,
      (e: unknown) => e as KilnError & { solved: Omit<Solved, 'res'> },
    );
    expect(err).toBeInstanceOf(KilnError);
    expect(err!.code).toMatch(/^FILEOP_/);
    expect(err!.details.digest).toBe(d3);
    const { vertices, dispatched, adopted } = err!.solved;
    expect(dispatched.has(vertices.get(d1!)?.cacheKey ?? '')).toBe(true);
    expect(adopted.has(vertices.get(d2!)?.cacheKey ?? '')).toBe(true);
    // The failed step was not run again as a task, and the step after it never ran.
    expect(dispatched.has(vertices.get(d3!)?.cacheKey ?? '')).toBe(false);
    expect(vertices.get(d3!)?.error).toContain(`missing-${tag}`);
    expect(vertices.get(d4!)?.startedAt).toBeUndefined();

    // What ran before the failure is cached: the chain up to it is answered by its records.
    const prefix = await solve(m2, `m-${tag}`);
    expect(prefix.vertices.get(d1!)?.cached).toBe(true);
    expect(prefix.vertices.get(d2!)?.cached).toBe(true);
    for (const d of [d1, d2])
      expect(prefix.dispatched.has(prefix.vertices.get(d!)?.cacheKey ?? '')).toBe(false);
    expect(prefix.adopted.size).toBe(0);
  });

  it('a RUN fused after file ops ends the chain: its output lines are its own, its exit code fails it alone', async () => {
    const tag = salt();
    const r1 = image(fixture).file(mkfile(`/r-${tag}`, 0o644, `R ${tag}\n`));
    const r2 = sh(r1, `cat /r-${tag}; echo out-${tag} > /o`);
    const r3 = sh(r2, `test "$(cat /o)" = out-${tag} && echo failing-${tag} && exit 3`);
    const r4 = r3.file(mkfile('/after', 0o644, 'x\n'));
    const g = parseDefinition(marshal(r4, { platform: LinuxAmd64 }).toProto());
    const [, d1, d2, d3, d4] = g.order;
    const err = await solve(r4, `r-${tag}`).then(
      () => undefined,
      (e: unknown) => e as KilnError & { solved: Omit<Solved, 'res'> },
    );
    expect(err).toBeInstanceOf(KilnError);
    expect(err!.details).toMatchObject({ digest: d3, exitCode: 3 });
    const { vertices, adopted, dispatched } = err!.solved;
    expect(dispatched.has(vertices.get(d1!)?.cacheKey ?? '')).toBe(true);
    expect(adopted.has(vertices.get(d2!)?.cacheKey ?? '')).toBe(true);
    // The RUN after a RUN is a task of its own (a RUN ends a chain, and a RUN's task has none).
    expect(dispatched.has(vertices.get(d3!)?.cacheKey ?? '')).toBe(true);
    expect(adopted.has(vertices.get(d3!)?.cacheKey ?? '')).toBe(false);
    expect(vertices.get(d4!)?.startedAt).toBeUndefined();
    expect(lines.get(d2!)).toEqual([`R ${tag}`]);
    expect(lines.get(d3!)).toEqual([`failing-${tag}`]);
    expect(lines.get(g.order[0]!) ?? []).toEqual([]);
  });

  it('a chain whose first steps are cached fuses the steps after them', async () => {
    const tag = salt();
    const base = image(fixture);
    const p1 = base.file(mkdir('/p', 0o755));
    const p2 = p1.file(mkfile('/p/1', 0o644, `1 ${tag}\n`));
    const first = await solve(p2, `p-${tag}`);
    const [d1, d2] = fileOps(p2);
    expect(first.adopted.has(first.vertices.get(d2!)?.cacheKey ?? '')).toBe(true);

    const p3 = p2.file(mkfile('/p/3', 0o644, '3\n'));
    const p4 = p3.file(copy(base, '/bin/busybox', '/p/bb'));
    const p5 = p4.file(mkfile('/p/5', 0o644, '5\n'));
    const end = sh(p5, `test "$(cat /p/1)" = "1 ${tag}" && test -x /p/bb && test -f /p/3`);
    const [, , d3, d4, d5] = fileOps(end);
    const second = await solve(end, `p-${tag}`);
    const key = (d: string | undefined): string => second.vertices.get(d ?? '')?.cacheKey ?? '';
    expect(second.vertices.get(d1!)?.cached).toBe(true);
    expect(second.vertices.get(d2!)?.cached).toBe(true);
    expect(second.dispatched.has(key(d3))).toBe(true);
    expect(second.adopted.has(key(d4))).toBe(true);
    expect(second.adopted.has(key(d5))).toBe(true);
    expect(second.dispatched.has(key(d4)) || second.dispatched.has(key(d5))).toBe(false);
    for (const d of [d3, d4, d5]) expect((await recordOf(key(d))).state).toBe('done');
  });

  it('a fused task whose worker dies mid-chain runs again, chain and all, when it is back', async () => {
    const tag = salt();
    const k1 = image(fixture).file(mkfile(`/k-${tag}`, 0o644, 'k\n'));
    const k2 = sh(k1, `echo started-${tag}; sleep 1; echo ${tag} > /k2`);
    const k3 = k2.file(mkfile('/k3', 0o644, '3\n'));
    const end = sh(k3, `test "$(cat /k2)" = ${tag}`);
    const g = parseDefinition(marshal(end, { platform: LinuxAmd64 }).toProto());
    const [, d1, d2, d3, d4] = g.order;
    const from = events.length;
    const solving = solve(end, `k-${tag}`);
    solving.catch(() => undefined);
    await waitFor('the fused RUN to start', () =>
      (lines.get(d2!) ?? []).includes(`started-${tag}`),
    );
    // The holder dies mid-chain and comes back on its state dir (a new incarnation): the task
    // is dispatched again at once and runs whole on it.
    worker.kill('SIGKILL');
    await worker.exited;
    worker = await startWorker();
    const done = await solving;
    expect(done.dispatched.has(done.vertices.get(d1!)?.cacheKey ?? '')).toBe(true);
    // Two chains: the file op and the RUN after it (the one killed), then the next file op and
    // the last RUN.
    for (const d of [d1, d2, d3, d4]) {
      const v = done.vertices.get(d!)!;
      expect(v.cached).toBe(false);
      const head = d === d1 || d === d3;
      expect(done.dispatched.has(v.cacheKey ?? '')).toBe(head);
      expect(done.adopted.has(v.cacheKey ?? '')).toBe(!head);
      expect((await recordOf(v.cacheKey ?? '')).state).toBe('done');
    }
    const again = events.slice(from).filter((e) => e.type === 'redispatched');
    expect(again.some((e) => e.type === 'redispatched' && e.reason === 'holder-lost')).toBe(true);
  });
});
