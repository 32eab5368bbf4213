// The worker process end to end: tasks submitted through the scheduler's real Dispatcher (a fresh
// nats-server for this file), run by WorkerNodes with real overlay snapshots, real crun, the
// fixture busybox image from the harness's registry and a real content store (a filesystem dir
// shared by the workers, and s3rver). No mocks; waits are on conditions.
import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  INPUT_LOST_CODE,
  decodeMaterializeReply,
  decodeResult,
  encodeMaterializeJson,
  fromBase64,
  getRecord,
  materializeSubject,
  taskKey,
} from '@kiln/bus';
import type { KilnError } from '@kiln/protocol';
import type { TaskProgress } from '@kiln/bus';
import { LinuxAmd64, LinuxArm64, image, local, marshal, parseDefinition } from '@kiln/llb';
import type { State } from '@kiln/llb';
import { FsBlobStore, S3BlobStore } from '@kiln/store';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from './config.js';
import type { WorkerConfig } from './config.js';
import { TaskRunner } from './task-runner.js';
import { WorkerNode } from './worker-node.js';
import { bundleWorkerMain, startDispatcher, submitGraph } from '../test-support/graphs.js';
import type { DispatcherLike, Results } from '../test-support/graphs.js';
import { spawnManaged } from '@kiln/common';
import type { ManagedProcess } from '@kiln/common';
import { makeTempDir, startNats, waitFor } from '@kiln/testing';
import type { NatsServerHandle } from '@kiln/testing';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE ?? '';

let tmp: { dir: string; remove: () => void };
let nats: NatsServerHandle;
let nc: NatsConnection;
let d: DispatcherLike;
let storeDir: string;
let ctxDir: string;
let mainJs: Promise<string> | undefined;
const nodes: WorkerNode[] = [];
let a: WorkerNode;
let b: WorkerNode;

function config(
  id: string,
  o: { natsUrl?: string; env?: Record<string, string>; argv?: string[] } = {},
): WorkerConfig {
  return loadConfig({
    argv: [
      ...['--id', id, '--state-dir', join(tmp.dir, id), '--slots', '2', '--log-level', 'silent'],
      ...(o.argv ?? []),
    ],
    env: {
      KILN_NATS_URL: o.natsUrl ?? nats.url,
      KILN_STORE_DIR: storeDir,
      KILN_WORKER_HEARTBEAT_MS: '250',
      KILN_WORKER_DRAIN_TIMEOUT_MS: '2000',
      ...o.env,
    },
  });
}

async function startNode(cfg: WorkerConfig, disp = d, list = nodes): Promise<WorkerNode> {
  const n = await WorkerNode.start(cfg);
  list.push(n);
  await waitFor(`the dispatcher to see ${n.id}`, () =>
    disp.liveWorkers().some((w) => w.id === n.id),
  );
  return n;
}

const def = (st: State): Uint8Array => marshal(st, { platform: LinuxAmd64 }).toBytes();
const sh = (st: State, script: string): State => st.run({ args: ['/bin/sh', '-c', script] }).root();
const salt = (): string => Math.random().toString(36).slice(2);

interface LogLine {
  msg?: string;
  taskId?: string;
  workerId?: string;
}

/** A worker process (`main.ts`, bundled once per file) with its pino lines. */
async function spawnNode(
  id: string,
): Promise<{ proc: ManagedProcess; logs: LogLine[]; state: string }> {
  mainJs ??= bundleWorkerMain(tmp.dir);
  const state = join(tmp.dir, id);
  const logs: LogLine[] = [];
  const proc = spawnManaged(
    process.execPath,
    [await mainJs, '--id', id, '--state-dir', state, '--store-dir', storeDir, '--nats', nats.url],
    {
      name: `worker ${id}`,
      env: {
        ...process.env,
        KILN_WORKER_HEARTBEAT_MS: '250',
        KILN_WORKER_DRAIN_TIMEOUT_MS: '20000',
        KILN_LOG_LEVEL: 'info',
      },
      onLine: (line, stream) => {
        if (stream === 'stdout' && line.startsWith('{')) logs.push(JSON.parse(line) as LogLine);
      },
    },
  );
  await waitFor(`${id} to register`, () => {
    if (proc.hasExited()) throw new Error(`${id} exited:\n${proc.output()}`);
    return d.liveWorkers().some((w) => w.id === id);
  });
  return { proc, logs, state };
}

/** Reads a file of a result held by `n`. */
async function readResult(n: WorkerNode, resultId: string, path: string): Promise<string> {
  const snap = n.runner.snapshotOf(resultId);
  if (snap === undefined) throw new Error(`${n.id} does not hold ${resultId}`);
  return n.runner.engine.read(snap, (dir) => readFile(join(dir, path), 'utf8'));
}

beforeAll(async () => {
  if (!fixture)
    throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through the vitest global setup');
  tmp = makeTempDir('worker-node');
  storeDir = join(tmp.dir, 'store');
  nats = await startNats();
  nc = await connect({ servers: nats.url, maxReconnectAttempts: -1 });
  d = await startDispatcher(nc);
  ctxDir = join(tmp.dir, 'context');
  await mkdir(ctxDir);
  await writeFile(join(ctxDir, 'hello.txt'), 'from the context\n');
  [a, b] = await Promise.all([
    // A uploads what it made soon after it goes idle; B only when asked (write-behind is
    // beyond any test's horizon there).
    startNode(
      config('node-a', {
        argv: ['--local', `context=${ctxDir}`],
        env: { KILN_WORKER_WRITE_BEHIND_IDLE_MS: '100' },
      }),
    ),
    startNode(config('node-b', { env: { KILN_WORKER_WRITE_BEHIND_IDLE_MS: '600000' } })),
  ]);
});

afterAll(async () => {
  await Promise.allSettled(nodes.map((n) => n.drain()));
  await d?.close();
  await nc?.close();
  await nats?.stop();
  tmp?.remove();
});

describe('WorkerNode', () => {
  it('runs an image source and an exec on its output on one worker, streaming output', async () => {
    const progress: TaskProgress[] = [];
    const st = sh(image(fixture), 'echo hello > /out.txt; echo line-out; echo line-err >&2');
    const {
      results,
      def: g,
      result,
    } = await submitGraph(d, def(st), {
      salt: salt(),
      place: () => a.id,
      onProgress: (p) => progress.push(p),
    });
    for (const r of results.values()) expect(r.workerId).toBe(a.id);
    const src = results.get(g.order[0] ?? '')?.outputs[0];
    const out = result.outputs[0];
    const srcLayers = src?.layers ?? [];
    const outLayers = out?.layers ?? [];
    expect(srcLayers.length).toBeGreaterThan(0);
    // The exec's output is the image's layers plus its own.
    expect(outLayers.length).toBe(srcLayers.length + 1);
    expect(outLayers.slice(0, -1).map((l) => l.digest)).toEqual(srcLayers.map((l) => l.digest));
    expect(out?.resultId).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(await readResult(a, out?.resultId ?? '', 'out.txt')).toBe('hello\n');
    const lines = progress.flatMap((p) => (p.stage === 'output' ? (p.lines ?? []) : []));
    expect(lines).toEqual(expect.arrayContaining(['line-out', 'line-err']));
    // The image's layers name their blobs; the exec's layer is only hashed (its diffID names
    // it), nothing was compressed or uploaded for it.
    const store = new FsBlobStore({ root: storeDir });
    for (const l of outLayers.slice(0, -1))
      expect(await store.has(l.digest as `sha256:${string}`)).toBe(true);
    const own = outLayers.at(-1);
    expect(own?.digest).toBe('');
    expect(own?.diffId).toMatch(/^sha256:[0-9a-f]{64}$/);
    // Its holder makes the blobs on request (blobs first), with the same diffIDs.
    const reply = decodeMaterializeReply(
      (
        await nc.request(
          materializeSubject(a.id),
          encodeMaterializeJson({ resultId: out?.resultId ?? '' }),
          { timeout: 30_000 },
        )
      ).data,
    );
    if ('error' in reply) throw new Error(reply.error.message);
    expect(reply.layers.map((l) => l.diffId)).toEqual(outLayers.map((l) => l.diffId));
    for (const l of reply.layers)
      expect(await store.has(l.digest as `sha256:${string}`)).toBe(true);
    // What it does not hold is an error reply.
    const unknown = decodeMaterializeReply(
      (
        await nc.request(
          materializeSubject(a.id),
          encodeMaterializeJson({ resultId: `sha256:${'0'.repeat(64)}` }),
          { timeout: 30_000 },
        )
      ).data,
    );
    expect(unknown).toMatchObject({ error: { code: 'MATERIALIZE_RESULT_UNKNOWN' } });
    // The registration advertises the result.
    await waitFor('a to advertise its result', () =>
      d
        .liveWorkers()
        .find((w) => w.id === a.id)
        ?.held.includes(out?.resultId ?? ''),
    );
  });

  it('consumes on B a result produced on A (layers fetched), and on A without a fetch', async () => {
    const token = salt();
    const producer = sh(image(fixture), `echo ${token} > /data.txt`);
    const run = salt();
    const produced = await submitGraph(d, def(producer), { salt: run, place: () => a.id });
    expect(produced.result.workerId).toBe(a.id);

    const consumer = sh(producer, 'cat /data.txt > /copy.txt');
    const before = b.runner.stats;
    const onB = await submitGraph(d, def(consumer), {
      salt: run,
      results: new Map(produced.results),
      place: () => b.id,
    });
    expect(onB.result.workerId).toBe(b.id);
    // A made the blobs of its result when B asked for them.
    expect(a.materializer?.stats.requests).toBeGreaterThan(0);
    const afterB = b.runner.stats;
    expect(afterB.bytesFetched).toBeGreaterThan(before.bytesFetched);
    expect(afterB.inputsFetched).toBe(before.inputsFetched + 1);
    // ... and the result says so (for the scheduler's affinity statistics).
    const onBResult = onB.result;
    expect(onBResult).toMatchObject({ inputsLocal: 0, inputsFetched: 1 });
    expect(Number(onBResult.bytesFetched)).toBe(afterB.bytesFetched - before.bytesFetched);
    expect(await readResult(b, onB.result.outputs[0]?.resultId ?? '', 'copy.txt')).toBe(
      `${token}\n`,
    );
    // B now holds the input too, under the same result id (content-addressed).
    expect(b.runner.snapshotOf(produced.result.outputs[0]?.resultId ?? '')).toBeDefined();

    // The same consumer (another cache key) on A: its input is local, nothing is fetched.
    const beforeA = a.runner.stats;
    const onA = await submitGraph(d, def(consumer), {
      salt: salt(),
      results: new Map(produced.results),
      place: () => a.id,
    });
    expect(onA.result.workerId).toBe(a.id);
    expect(a.runner.stats.bytesFetched).toBe(beforeA.bytesFetched);
    expect(a.runner.stats.inputsLocal).toBe(beforeA.inputsLocal + 1);
    expect(onA.result).toMatchObject({ inputsLocal: 1, inputsFetched: 0 });
    expect(Number(onA.result.bytesFetched)).toBe(0);
    expect(await readResult(a, onA.result.outputs[0]?.resultId ?? '', 'copy.txt')).toBe(
      `${token}\n`,
    );
  });

  it('write-behind: an idle worker uploads what it made; the records gain the digests', async () => {
    const run = salt();
    const st = sh(image(fixture), `echo ${run} > /wb.txt`);
    const produced = await submitGraph(d, def(st), { salt: run, place: () => a.id });
    const made = produced.result.outputs[0];
    expect(made?.layers?.at(-1)?.digest).toBe('');
    const key = `sha256:${createHash('sha256').update(`${run} ${produced.def.result.digest}`).digest('hex')}`;
    const uploaded = await waitFor('the record to name the blobs', async () => {
      const rec = await getRecord(d.bus.tasks, taskKey(key));
      const r = decodeResult(fromBase64(rec?.record.result ?? ''));
      return r.outputs[0]?.layers?.every((l) => l.digest !== '') ? r : undefined;
    });
    expect(uploaded.outputs[0]?.resultId).toBe(made?.resultId);
    expect(uploaded.outputs[0]?.layers?.map((l) => l.diffId)).toEqual(
      made?.layers?.map((l) => l.diffId),
    );
    // The records are updated before the result leaves the pending list: wait for both.
    await waitFor(
      'write-behind to drop the uploaded result',
      () => !a.writeBehind?.pending().includes(made?.resultId ?? ''),
    );
    const store = new FsBlobStore({ root: storeDir });
    for (const l of uploaded.outputs[0]?.layers ?? [])
      expect(await store.has(l.digest as `sha256:${string}`)).toBe(true);
    // A consumer elsewhere now needs nothing of A: the blobs are in the store.
    const asked = a.materializer?.stats.requests ?? 0;
    const onB = await submitGraph(d, def(sh(st, 'cat /wb.txt > /wb2.txt')), {
      salt: run,
      results: new Map([...produced.results, [produced.def.result.digest, uploaded]]),
      place: () => b.id,
    });
    expect(await readResult(b, onB.result.outputs[0]?.resultId ?? '', 'wb2.txt')).toBe(`${run}\n`);
    expect(a.materializer?.stats.requests).toBe(asked);
  });

  it('write-behind yields to tasks: a pass stops before the next layer once a task arrives', async () => {
    const run = salt();
    const st = sh(sh(image(fixture), `echo ${run} > /y1.txt`), `echo ${run} > /y2.txt`);
    const produced = await submitGraph(d, def(st), { salt: run, place: () => b.id });
    const id = produced.result.outputs[0]?.resultId ?? '';
    // B's write-behind waits far longer than this test: the result is pending there.
    expect(b.writeBehind?.pending()).toContain(id);
    expect(await b.runner.materializeResult(id, { yieldTo: () => true })).toBeUndefined();
    const layers = await b.runner.materializeResult(id, { yieldTo: () => false });
    expect(layers?.map((l) => l.diffId)).toEqual(
      produced.result.outputs[0]?.layers?.map((l) => l.diffId),
    );
  });

  it('fails a task whose input has no blob and whose holder is gone with TASK_INPUT_LOST', async () => {
    const producer = sh(image(fixture), `echo ${salt()} > /data.txt`);
    const run = salt();
    const produced = await submitGraph(d, def(producer), { salt: run, place: () => a.id });
    const results = new Map(produced.results);
    const last = produced.def.result.digest;
    // The producer's result as if its holder had died: no worker answers for it.
    results.set(last, { ...produced.result, workerId: 'node-gone' } as typeof produced.result);
    const consumer = sh(producer, 'cat /data.txt > /copy.txt');
    const err = await submitGraph(d, def(consumer), {
      salt: run,
      results,
      place: () => b.id,
    }).then(
      () => undefined,
      (e: unknown) => e as KilnError,
    );
    expect(err?.code).toBe(INPUT_LOST_CODE);
    expect(err?.details.resultId).toBe(produced.result.outputs[0]?.resultId);
    expect(err?.retryable).toBe(false);
    expect(b.runner.snapshotOf(produced.result.outputs[0]?.resultId ?? '')).toBeUndefined();
  });

  it('reports a failing exec as a task error with its exit code and output tail', async () => {
    const run = salt();
    const st = sh(image(fixture), 'echo boom >&2; exit 3');
    const err = await submitGraph(d, def(st), { salt: run, place: () => a.id }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: 'EXEC_FAILED', details: { exitCode: 3 } });
    const g = parseDefinition(def(st));
    const key = `sha256:${createHash('sha256').update(`${run} ${g.result.digest}`).digest('hex')}`;
    const rec = (await getRecord(d.bus.tasks, taskKey(key)))?.record;
    expect(rec).toMatchObject({
      state: 'failed',
      attempt: 1,
      error: { code: 'EXEC_FAILED', exitCode: 3 },
    });
    const result = decodeResult(fromBase64(rec?.result ?? ''));
    expect(result.error).toMatchObject({ code: 'EXEC_FAILED', exitCode: 3, retryable: false });
    expect(result.error?.outputTail).toContain('boom');
  });

  it('fails ops that need the client session with a typed error', async () => {
    const st = image(fixture)
      .run({
        args: ['cat', '/run/secrets/tok'],
        secrets: [{ id: 'tok', target: '/run/secrets/tok' }],
      })
      .root();
    const err = await submitGraph(d, def(st), {
      salt: salt(),
      place: () => a.id,
    }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({
      code: 'SESSION_UNAVAILABLE',
      message: expect.stringContaining('secret "tok"') as string,
    });
  });

  it('serves local:// sources from the configured directory map', async () => {
    const { result } = await submitGraph(d, def(local('context')), {
      salt: salt(),
      place: () => a.id,
    });
    expect(result.workerId).toBe(a.id);
    expect(await readResult(a, result.outputs[0]?.resultId ?? '', 'hello.txt')).toBe(
      'from the context\n',
    );
    // B has no such directory: the same source fails there, typed.
    const err = await submitGraph(d, def(local('context')), {
      salt: salt(),
      place: () => b.id,
    }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({
      code: 'SESSION_UNAVAILABLE',
      message: expect.stringContaining('local "context"') as string,
    });
  });

  it('drains on SIGTERM: the process finishes its task (inputs fetched), deregisters, exits 0', async () => {
    const { proc, logs } = await spawnNode('node-t');
    try {
      const run = salt();
      const base = await submitGraph(d, def(image(fixture)), { salt: run, place: () => a.id });
      const st = sh(image(fixture), 'echo started; sleep 1; echo drained > /f.txt');
      let started!: () => void;
      const isStarted = new Promise<void>((r) => (started = r));
      const done = submitGraph(d, def(st), {
        salt: run,
        results: new Map(base.results),
        place: () => 'node-t',
        onProgress: (p) => {
          if (p.workerId === 'node-t' && p.lines?.includes('started')) started();
        },
      });
      await Promise.race([
        isStarted,
        done.then(() => {
          throw new Error('the task finished before node-t was signalled');
        }),
      ]);
      // SIGTERM to the worker process alone (not its process group: crun would get it too).
      const stopped = proc.stop(30_000);
      const { result, results } = await done;
      expect(result.workerId).toBe('node-t');
      expect(result).toMatchObject({ inputsLocal: 0, inputsFetched: 1 });
      expect(Number(result.bytesFetched)).toBeGreaterThan(0);
      expect(await stopped).toMatchObject({ code: 0 });
      expect(logs.some((l) => l.msg === 'worker drained')).toBe(true);
      await waitFor('node-t to be gone', () => !d.liveWorkers().some((w) => w.id === 'node-t'));
      // Its result outlives it: the drain uploaded it (write-behind) and its record names the
      // blobs now, so B rebuilds it from the store without asking anyone.
      const g = parseDefinition(def(st));
      const key = `sha256:${createHash('sha256').update(`${run} ${g.result.digest}`).digest('hex')}`;
      const rec = await getRecord(d.bus.tasks, taskKey(key));
      const uploaded = decodeResult(fromBase64(rec?.record.result ?? ''));
      expect(uploaded.outputs[0]?.resultId).toBe(result.outputs[0]?.resultId);
      expect(uploaded.outputs[0]?.layers?.every((l) => l.digest !== '')).toBe(true);
      expect(result.outputs[0]?.layers?.some((l) => l.digest === '')).toBe(true);
      const onB = await submitGraph(d, def(sh(st, 'cat /f.txt > /g.txt')), {
        salt: run,
        results: new Map([...results, [g.result.digest, uploaded]]),
        place: () => b.id,
      });
      expect(await readResult(b, onB.result.outputs[0]?.resultId ?? '', 'g.txt')).toBe('drained\n');
    } finally {
      await proc.stop(5_000);
    }
  });

  it('re-runs on another worker the task of a worker process killed mid-exec', async () => {
    const { proc: k, logs, state: kState } = await spawnNode('node-k');
    try {
      const run = salt();
      const base = image(fixture);
      // The image on k first, so that the exec's run is what gets killed.
      const pulled = await submitGraph(d, def(base), { salt: run, place: () => 'node-k' });
      expect(pulled.result.workerId).toBe('node-k');
      const st = sh(base, 'echo started; sleep 2; echo survived > /f.txt');
      let started!: () => void;
      const isStarted = new Promise<void>((r) => (started = r));
      const done = submitGraph(d, def(st), {
        salt: run,
        results: new Map(pulled.results),
        place: () => 'node-k',
        onProgress: (p) => {
          if (p.workerId === 'node-k' && p.lines?.includes('started')) started();
        },
      });
      await Promise.race([
        isStarted,
        done.then(() => {
          throw new Error('the task finished before node-k could be killed');
        }),
      ]);
      expect(logs.some((l) => l.msg === 'task claimed')).toBe(true);
      k.kill('SIGKILL');
      await k.exited;
      const { result } = await done;
      expect([a.id, b.id]).toContain(result.workerId);
      expect(result.attemptToken).not.toBe('');
      const n = result.workerId === a.id ? a : b;
      expect(await readResult(n, result.outputs[0]?.resultId ?? '', 'f.txt')).toBe('survived\n');
    } finally {
      await k.stop(5_000);
      // What the dead process left (its container, exec mounts) is swept by the next open.
      await TaskRunner.open({ stateDir: kState, store: new FsBlobStore({ root: storeDir }) });
    }
  });

  it('runs an arm64 task on a worker that emulates arm64 through qemu binfmt', async () => {
    const mine: WorkerNode[] = [];
    try {
      const emu = await startNode(
        config('node-emu', { argv: ['--emulate', 'linux/arm64'] }),
        d,
        mine,
      );
      expect(emu.config.platforms).toEqual([
        { os: 'linux', architecture: 'amd64', emulated: false },
        { os: 'linux', architecture: 'arm64', emulated: true },
      ]);
      const run = salt();
      const st = sh(image(fixture), 'uname -m > /arch.txt');
      const { result, def: g } = await submitGraph(
        d,
        marshal(st, { platform: LinuxArm64 }).toBytes(),
        {
          salt: run,
          arch: 'arm64',
          place: () => emu.id,
        },
      );
      expect(result.workerId).toBe(emu.id);
      expect(await readResult(emu, result.outputs[0]?.resultId ?? '', 'arch.txt')).toBe(
        'aarch64\n',
      );
      const key = `sha256:${createHash('sha256').update(`${run} ${g.result.digest}`).digest('hex')}`;
      expect((await getRecord(d.bus.tasks, taskKey(key)))?.record).toMatchObject({
        state: 'done',
        emulated: true,
      });
    } finally {
      await Promise.allSettled(mine.map((n) => n.drain()));
    }
  });

  it('works against an S3 store: produced on one worker, fetched by another', async () => {
    const env = process.env;
    const s3 = {
      KILN_S3_ENDPOINT: env.KILN_TEST_S3_ENDPOINT ?? '',
      KILN_S3_BUCKET: env.KILN_TEST_S3_BUCKET ?? '',
      KILN_S3_ACCESS_KEY: env.KILN_TEST_S3_ACCESS_KEY ?? '',
      KILN_S3_SECRET_KEY: env.KILN_TEST_S3_SECRET_KEY ?? '',
      KILN_S3_PREFIX: `worker-node-${salt()}/`,
    };
    // Its own bus: these workers must not take the filesystem-store tasks (and vice versa).
    const nats2 = await startNats();
    const nc2 = await connect({ servers: nats2.url, maxReconnectAttempts: -1 });
    const d2 = await startDispatcher(nc2);
    const mine: WorkerNode[] = [];
    try {
      const [c, e] = await Promise.all([
        startNode(config('node-c', { natsUrl: nats2.url, env: s3 }), d2, mine),
        startNode(config('node-e', { natsUrl: nats2.url, env: s3 }), d2, mine),
      ]);
      expect(c.config.store.type).toBe('s3');
      const token = salt();
      const producer = sh(image(fixture), `echo ${token} > /data.txt`);
      const run = salt();
      const produced: Results = (
        await submitGraph(d2, def(producer), { salt: run, place: () => c.id })
      ).results;
      const consumed = await submitGraph(d2, def(sh(producer, 'cat /data.txt > /copy.txt')), {
        salt: run,
        results: new Map(produced),
        place: () => e.id,
      });
      expect(consumed.result.workerId).toBe(e.id);
      expect(e.runner.stats.bytesFetched).toBeGreaterThan(0);
      expect(e.runner.store).toBeInstanceOf(S3BlobStore);
      expect(await readResult(e, consumed.result.outputs[0]?.resultId ?? '', 'copy.txt')).toBe(
        `${token}\n`,
      );
    } finally {
      await Promise.allSettled(mine.map((n) => n.drain()));
      await d2.close();
      await nc2.close();
      await nats2.stop();
    }
  });
});
