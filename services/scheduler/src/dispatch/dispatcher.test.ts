// The Dispatcher against a real nats-server (fresh for this file, with the farm's users and role
// permissions, so every scenario also checks that the permissions are enough) and real worker
// processes (the worker's task CLI with its sleep executor). No mocks; waits are on conditions.
import {
  TASK_STREAM,
  connectNats,
  decodeTask,
  ensureTaskConsumer,
  getRecord,
  openBus,
  taskKey,
} from '@kiln/bus';
import type { GeneratedFarmAuth, TaskInit } from '@kiln/bus';
import type { NatsConnection } from '@nats-io/transport-node';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Dispatcher } from './dispatcher.js';
import type { DispatcherOptions } from './dispatcher.js';
import type { DispatchEvent } from './events.js';
import { DispatcherClosedError, TaskCancelledError } from './errors.js';
import { bundleWorkerCli, spawnWorker } from '../test-support/workers.js';
import type { WorkerProcess } from '../test-support/workers.js';
import { makeTempDir, natsAuthEnv, startNats, testTask, waitFor } from '@kiln/testing';
import type { NatsServerHandle } from '@kiln/testing';

let nats: NatsServerHandle;
let cli: string;
let tmp: { dir: string; remove: () => void };
let nc: NatsConnection;
let d: Dispatcher;
const events: DispatchEvent[] = [];
const workers: WorkerProcess[] = [];
const dispatchers: Dispatcher[] = [];
const conns: NatsConnection[] = [];

const DISPATCH: Omit<DispatcherOptions, 'nc'> = {
  affinityDelayMs: 200,
  heartbeatTimeoutMs: 1_500,
  maxAttempts: 3,
  monitorIntervalMs: 100,
};

/** Every worker id the suite starts: each is a NATS user with its own permissions. */
const WORKER_IDS = [
  'aff-a',
  'aff-b',
  'burst-a',
  'burst-b',
  'cancel-w',
  'dedup-1',
  'delay-a',
  'delay-b',
  'delay-ghost',
  'drain-u',
  'drain-v',
  'kill-k',
  'kill-l',
  'late-s',
  'late-u',
  'lostmsg-w',
  'lost-w',
  'maxdel-w',
  'maxdel-x',
  'nrestart-w',
  'poison-1',
  'restart-s',
  'route-amd64',
  'route-arm64',
  'route-emu',
];

function authOf(server: NatsServerHandle): GeneratedFarmAuth {
  if (!server.auth) throw new Error('nats-server started without auth');
  return server.auth;
}

beforeAll(async () => {
  tmp = makeTempDir('dispatch');
  [nats, cli] = await Promise.all([
    startNats({ auth: { workers: WORKER_IDS } }),
    bundleWorkerCli(tmp.dir),
  ]);
  nc = await connectNats(nats.url, authOf(nats).scheduler);
  d = await Dispatcher.start({ nc, ...DISPATCH, onEvent: (e) => events.push(e) });
});

afterEach(async () => {
  await Promise.all(workers.splice(0).map((w) => w.proc.stop(5_000)));
  await Promise.all(dispatchers.splice(0).map((x) => x.close()));
  await Promise.all(conns.splice(0).map((c) => c.close()));
});

afterAll(async () => {
  await d?.close();
  await nc?.close();
  await nats?.stop();
  tmp?.remove();
});

async function worker(
  id: string,
  platforms = 'linux/amd64',
  slots = 1,
  server = nats,
  disp = d,
): Promise<WorkerProcess> {
  const w = await spawnWorker(cli, server.url, {
    id,
    platforms,
    slots,
    env: natsAuthEnv(authOf(server).workers[id]),
  });
  workers.push(w);
  await waitFor(`dispatcher to see ${id}`, () => disp.liveWorkers().some((x) => x.id === id));
  return w;
}

/** Waits until the worker's stdout has caught up with its report of `t` (pipes lag NATS). */
async function reported(w: WorkerProcess, t: TaskInit): Promise<void> {
  await waitFor(`${w.id} to report ${t.taskId}`, () =>
    w.events.some((e) => e.type === 'completed' && e.taskId === t.taskId),
  );
}

async function record(t: TaskInit, dispatcher = d) {
  return (await getRecord(dispatcher.bus.tasks, taskKey(t.cacheKey ?? '')))?.record;
}

async function streamMessages(dispatcher = d): Promise<number> {
  return (await dispatcher.bus.jsm.streams.info(TASK_STREAM)).state.messages;
}

describe('Dispatcher', () => {
  it('routes by platform: arm64 never on amd64 and vice versa, native before emulated', async () => {
    const [amd, arm, emu] = await Promise.all([
      worker('route-amd64', 'linux/amd64', 2),
      worker('route-arm64', 'linux/arm64', 2),
      worker('route-emu', 'linux/arm64=emulated', 2),
    ]);
    const tasks = [
      ...Array.from({ length: 6 }, () => testTask({ platform: 'linux/amd64' })),
      ...Array.from({ length: 6 }, () => testTask({ platform: 'linux/arm64/v8' })),
    ];
    const results = await Promise.all(tasks.map((t) => d.submit(t)));
    for (const [i, t] of tasks.entries()) {
      expect(results[i]?.workerId).toBe(t.platform?.Architecture === 'amd64' ? amd.id : arm.id);
    }
    expect(emu.events.some((e) => e.type === 'claimed')).toBe(false);
    // With no native arm64 worker left, the emulated one runs arm64 tasks, and says so.
    await arm.proc.stop(5_000);
    await waitFor(
      'the native arm64 worker to be gone',
      () => !d.liveWorkers().some((w) => w.id === arm.id),
    );
    const t = testTask({ platform: 'linux/arm64' });
    expect((await d.submit(t)).workerId).toBe(emu.id);
    expect(await record(t)).toMatchObject({ holder: emu.id, emulated: true });
  });

  it('runs a burst of concurrent tasks, each once, and leaves no message in the stream', async () => {
    // Many watch entries per loop turn (applied together), claims arriving in batches on the
    // workers (fetch callback), acks sent with the reports.
    const [a, b] = await Promise.all([
      worker('burst-a', 'linux/amd64', 8),
      worker('burst-b', 'linux/amd64', 8),
    ]);
    const tasks = Array.from({ length: 300 }, () => testTask());
    const results = await Promise.all(tasks.map((t) => d.submit(t)));
    for (const [i, t] of tasks.entries()) {
      expect(results[i]?.taskId).toBe(t.taskId);
      expect(results[i]?.outputs[0]?.resultId).toBe(`res-${t.cacheKey}`);
    }
    await waitFor('both workers to report every task', () =>
      tasks.every((t) =>
        [a, b].some((w) => w.events.some((e) => e.type === 'completed' && e.taskId === t.taskId)),
      ),
    );
    const claims = [...a.events, ...b.events].filter((e) => e.type === 'claimed');
    expect(claims).toHaveLength(tasks.length);
    expect(new Set(claims.map((e) => e.taskId)).size).toBe(tasks.length);
    await waitFor('the queue to be empty', async () => (await streamMessages()) === 0);
    // Under load this once hung: a report checked against the scheduler's stale copy of the record
    // (from before the claim) was refused and its task never completed (see casRecord).
  }, 120_000);

  it('publishes a queued attempt again when its queue message is lost', async () => {
    const seen: DispatchEvent[] = [];
    const d2 = await Dispatcher.start({
      nc,
      ...DISPATCH,
      queueCheckMs: 300,
      onEvent: (e) => seen.push(e),
    });
    dispatchers.push(d2);
    const w = await worker('lostmsg-w', 'linux/amd64', 1, nats, d2);
    const busy = testTask({ sleepMs: 1_500 });
    const first = d2.submit(busy);
    await waitFor('the worker to be busy', () =>
      w.events.some((e) => e.type === 'claimed' && e.taskId === busy.taskId),
    );
    const t = testTask();
    const second = d2.submit(t);
    // Its queue message (the worker, busy, pulls nothing meanwhile), lost behind the farm's back.
    const msg = await waitFor('the task on the queue', async () => {
      const m = await d2.bus.jsm.streams
        .getMessage(TASK_STREAM, { last_by_subj: 'kiln.task.linux.amd64' })
        .catch(() => undefined);
      return m && decodeTask(m.data).taskId === t.taskId ? m : undefined;
    });
    expect(await d2.bus.jsm.streams.deleteMessage(TASK_STREAM, msg.seq)).toBe(true);
    await first;
    expect((await second).taskId).toBe(t.taskId);
    expect(seen).toContainEqual({ type: 'task-requeued', taskId: t.taskId, seq: msg.seq });
  });

  it('runs a key once for concurrent submits from two builds; later submits get the stored result', async () => {
    const w = await worker('dedup-1', 'linux/amd64', 2);
    const t = testTask({ sleepMs: 300 });
    const progress: string[] = [];
    const [a, b] = await Promise.all([
      d.submit(t, { buildId: 'x', onProgress: (p) => progress.push(p.stage ?? '') }),
      d.submit({ ...t, taskId: 'other', buildId: 'y' }),
    ]);
    expect(progress).toContain('sleep');
    expect(a.attemptToken).toBe(b.attemptToken);
    expect(a.outputs[0]?.resultId).toBe(`res-${t.cacheKey}`);
    await reported(w, t);
    expect(w.events.filter((e) => e.type === 'claimed').length).toBe(1);
    expect((await record(t))?.builds.sort()).toEqual(['x', 'y']);
    // A second dispatcher (another scheduler instance) asking later gets the stored result.
    const d2 = await Dispatcher.start({ nc, ...DISPATCH });
    dispatchers.push(d2);
    const c = await d2.submit({ ...t, buildId: 'z' });
    expect(c.attemptToken).toBe(a.attemptToken);
    expect(w.events.filter((e) => e.type === 'claimed').length).toBe(1);
  });

  it('offers a task to the worker that holds its inputs first', async () => {
    const [a, b] = await Promise.all([worker('aff-a'), worker('aff-b')]);
    // Preferred worker given by the caller.
    const r1 = await d.submit(testTask(), { preferredWorkers: [b.id] });
    expect(r1.workerId).toBe(b.id);
    const r2 = await d.submit(testTask(), { preferredWorkers: [a.id] });
    expect(r2.workerId).toBe(a.id);
    // Holder found through the registration's summary of held results.
    const producer = await d.submit(testTask({ output: 'aff-result-1' }), {
      preferredWorkers: [b.id],
    });
    expect(producer.workerId).toBe(b.id);
    await waitFor('b to advertise the result', () =>
      d
        .liveWorkers()
        .find((w) => w.id === b.id)
        ?.held.includes('aff-result-1'),
    );
    for (let i = 0; i < 4; i++) {
      const t = testTask({ inputs: ['aff-result-1'] });
      expect((await d.submit(t)).workerId).toBe(b.id);
      await reported(b, t);
      expect(b.events.find((e) => e.type === 'claimed' && e.taskId === t.taskId)?.via).toBe(
        'offer',
      );
    }
  });

  it('releases the task to the platform queue when the holder is busy past the delay, or absent', async () => {
    const [a, b] = await Promise.all([worker('delay-a'), worker('delay-b')]);
    const long = testTask({ sleepMs: 4_000 });
    const longDone = d.submit(long, { preferredWorkers: [a.id] });
    await waitFor('a to run the long task', () => a.claimed(long.taskId ?? ''));
    const t = testTask();
    const r = await d.submit(t, { preferredWorkers: [a.id] });
    expect(r.workerId).toBe(b.id);
    expect((await record(long))?.state).toBe('running'); // a was busy all along
    expect(
      a.events.some(
        (e) => e.type === 'offer-declined' && e.taskId === t.taskId && e.reason === 'busy',
      ),
    ).toBe(true);
    expect((await longDone).workerId).toBe(a.id);
    // Absent: a worker killed a moment ago still looks alive to placement; nobody answers.
    const ghost = await worker('delay-ghost');
    ghost.proc.kill('SIGKILL');
    await ghost.proc.exited;
    const t2 = testTask();
    const r2 = await d.submit(t2, { preferredWorkers: [ghost.id] });
    expect([a.id, b.id]).toContain(r2.workerId);
  });

  it('re-runs the task of a worker killed with SIGKILL mid-task on another worker', async () => {
    const [k, l] = await Promise.all([worker('kill-k'), worker('kill-l')]);
    const t = testTask({ sleepMs: 2_000 });
    const done = d.submit(t, { preferredWorkers: [k.id] });
    await waitFor('k to run the task', () => k.claimed(t.taskId ?? ''));
    k.proc.kill('SIGKILL');
    await k.proc.exited;
    const r = await done;
    expect(r.workerId).toBe(l.id);
    expect(await record(t)).toMatchObject({ state: 'done', attempt: 2, holder: l.id });
    expect(
      events.some(
        (e) => e.type === 'redispatched' && e.taskId === t.taskId && e.reason === 'holder-lost',
      ),
    ).toBe(true);
    await waitFor('the queue to be empty', async () => (await streamMessages()) === 0);
  });

  it('fails a task that keeps failing after maxAttempts and leaves no message in the stream', async () => {
    const w = await worker('poison-1');
    const t = testTask({ fail: 'retryable' });
    const err = await d.submit(t).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({
      code: 'TEST_FAIL',
      details: { attempts: 3, vertexDigest: t.vertexDigest },
    });
    expect(await record(t)).toMatchObject({ state: 'failed', attempt: 3 });
    await waitFor(
      'three reports',
      () => w.events.filter((e) => e.type === 'completed' && e.taskId === t.taskId).length === 3,
    );
    expect(w.events.filter((e) => e.type === 'claimed' && e.taskId === t.taskId).length).toBe(3);
    // A non-retryable error fails at once.
    const fatal = testTask({ fail: 'fatal' });
    await expect(d.submit(fatal)).rejects.toMatchObject({ code: 'TEST_FATAL' });
    expect((await record(fatal))?.attempt).toBe(1);
    await waitFor('the queue to be empty', async () => (await streamMessages()) === 0);
  });

  it('forgets a lost result (no blob, its holder named): the next submit runs the task again', async () => {
    const w = await worker('lost-w');
    const t = testTask({ lazy: true });
    const first = await d.submit(t);
    expect(first.workerId).toBe(w.id);
    // Another holder's loss, or a result whose blobs exist, changes nothing.
    await d.forgetResult(t.cacheKey ?? '', 'someone-else');
    expect((await record(t))?.state).toBe('done');
    const eager = testTask();
    await d.submit(eager);
    await d.forgetResult(eager.cacheKey ?? '', w.id);
    expect((await record(eager))?.state).toBe('done');
    // Lost with its holder: the record fails, and the next submit runs it again.
    await d.forgetResult(t.cacheKey ?? '', w.id);
    expect(await record(t)).toMatchObject({
      state: 'failed',
      error: { code: 'TASK_RESULT_LOST', retryable: true },
    });
    expect(events).toContainEqual({ type: 'result-lost', taskId: t.taskId, worker: w.id });
    const again = await d.submit({ ...t, taskId: 'again' });
    expect(again.taskId).toBe(t.taskId);
    expect((await record(t))?.state).toBe('done');
    // The worker ran it twice (its stdout may lag behind the bus).
    await waitFor('the second run to be reported', () =>
      w.events.filter((e) => e.type === 'completed' && e.taskId === t.taskId).length === 2
        ? true
        : undefined,
    );
  });

  it('discards the late result of a worker presumed dead', async () => {
    const s = await worker('late-s');
    const t = testTask({ sleepMs: 1_000 });
    const done = d.submit(t);
    await waitFor('s to run the task', () => s.claimed(t.taskId ?? ''));
    const firstToken = (await record(t))?.attemptToken;
    s.proc.kill('SIGSTOP'); // frozen: no heartbeat, no keepalive, its task "finishes" later
    const u = await worker('late-u');
    const r = await done;
    expect(r.workerId).toBe(u.id);
    const accepted = await record(t);
    s.proc.kill('SIGCONT');
    await waitFor('s to find its attempt stale', () =>
      s.events.some((e) => e.type === 'stale' && e.taskId === t.taskId),
    );
    const after = await record(t);
    expect(after).toEqual(accepted);
    expect(after?.attemptToken).not.toBe(firstToken);
    expect(after?.holder).toBe(u.id);
  });

  it('deletes a queue message that reached MaxDeliver and still completes the task', async () => {
    // Its own platform, so that its consumer can have MaxDeliver 1 and a 1 s ack wait.
    const strict = await openBus(nc, { maxDeliver: 1, ackWaitMs: 1_000 });
    await ensureTaskConsumer(strict, { os: 'linux', architecture: 's390x' }, false);
    const w = await worker('maxdel-w', 'linux/s390x');
    const t = testTask({ platform: 'linux/s390x', sleepMs: 1_500 });
    const done = d.submit(t);
    await waitFor('w to run the task', () => w.claimed(t.taskId ?? ''));
    w.proc.kill('SIGSTOP'); // no working(): the ack wait runs out on the only delivery allowed
    // The server notices the exhausted message when it next has a pull to serve on that consumer.
    const x = await worker('maxdel-x', 'linux/s390x');
    expect((await done).workerId).toBe(x.id);
    await waitFor('the message to be deleted', () =>
      events.some((e) => e.type === 'stale-message-deleted'),
    );
    w.proc.kill('SIGCONT');
    await waitFor('the queue to be empty', async () => (await streamMessages()) === 0);
  });

  it('re-dispatches, without counting an attempt, a task handed back by a worker draining on SIGTERM', async () => {
    const [v, u] = await Promise.all([worker('drain-v'), worker('drain-u')]);
    const t = testTask({ sleepMs: 2_500 });
    const done = d.submit(t, { preferredWorkers: [v.id] });
    await waitFor('v to run the task', () => v.claimed(t.taskId ?? ''));
    await v.proc.stop(10_000); // SIGTERM: drain, hand back after its 200 ms drain timeout, exit
    await waitFor('v to report the hand-back', () =>
      v.events.some((e) => e.type === 'handed-back' && e.taskId === t.taskId),
    );
    expect((await done).workerId).toBe(u.id);
    expect(await record(t)).toMatchObject({ state: 'done', attempt: 1, holder: u.id });
    expect(
      events.some(
        (e) => e.type === 'redispatched' && e.taskId === t.taskId && e.reason === 'released',
      ),
    ).toBe(true);
  });

  it('cancels a build: its own tasks stop or leave the queue, tasks shared with another build complete', async () => {
    const w = await worker('cancel-w', 'linux/amd64', 2);
    const own = testTask({ sleepMs: 30_000 });
    const shared = testTask({ sleepMs: 800 });
    // Waits on the queue: both of the worker's slots are busy.
    const waiting = testTask({ sleepMs: 30_000 });
    const pOwn = d.submit(own, { buildId: 'x' });
    const pSharedX = d.submit(shared, { buildId: 'x' });
    const pSharedY = d.submit(shared, { buildId: 'y' });
    await waitFor(
      'both tasks to run',
      () => w.claimed(own.taskId ?? '') && w.claimed(shared.taskId ?? ''),
    );
    const pWaiting = d.submit(waiting, { buildId: 'x' });
    await waitFor('the third task on the queue', async () => (await streamMessages()) > 2);
    d.cancel('x');
    await expect(pOwn).rejects.toBeInstanceOf(TaskCancelledError);
    await expect(pSharedX).rejects.toBeInstanceOf(TaskCancelledError);
    await expect(pWaiting).rejects.toBeInstanceOf(TaskCancelledError);
    // Taken off the queue: no worker ever pulls it.
    await waitFor('the queued task to be withdrawn', () =>
      events.some((e) => e.type === 'task-withdrawn' && e.taskId === waiting.taskId),
    );
    expect((await pSharedY).workerId).toBe(w.id);
    await waitFor(
      'the own task to be cancelled',
      async () => (await record(own))?.state === 'cancelled',
    );
    await waitFor('the worker to stop it', () =>
      w.events.some((e) => e.type === 'stale' && e.taskId === own.taskId),
    );
    await waitFor('the queue to be empty', async () => (await streamMessages()) === 0);
    expect(w.events.filter((e) => e.taskId === waiting.taskId)).toEqual([]);
  });

  it('survives a scheduler restart: a new dispatcher picks up the running task', async () => {
    const w = await worker('restart-s');
    const c1 = await connectNats(nats.url, authOf(nats).scheduler);
    conns.push(c1);
    const d1 = await Dispatcher.start({ nc: c1, ...DISPATCH });
    const t = testTask({ sleepMs: 800 });
    const first = d1.submit(t);
    await waitFor('the task to run', () => w.claimed(t.taskId ?? ''));
    await d1.close();
    await expect(first).rejects.toBeInstanceOf(DispatcherClosedError);
    const d2 = await Dispatcher.start({ nc: c1, ...DISPATCH });
    dispatchers.push(d2);
    const r = await d2.submit(t);
    expect(r.workerId).toBe(w.id);
    await reported(w, t);
    expect(w.events.filter((e) => e.type === 'claimed').length).toBe(1);
  });
});

describe('Dispatcher across a nats-server restart', () => {
  it('reconnects and completes every task', async () => {
    const store = makeTempDir('dispatch-restart');
    let server = await startNats({ storeDir: store.dir, auth: { workers: WORKER_IDS } });
    const c = await connectNats(server.url, authOf(server).scheduler, { reconnectTimeWait: 100 });
    conns.push(c);
    try {
      const dr = await Dispatcher.start({ nc: c, ...DISPATCH });
      dispatchers.push(dr);
      const w = await worker('nrestart-w', 'linux/amd64', 2, server, dr);
      const tasks = Array.from({ length: 6 }, () => testTask({ sleepMs: 700 }));
      const all = Promise.all(tasks.map((t) => dr.submit(t)));
      await waitFor('a task to run', () => w.events.some((e) => e.type === 'claimed'));
      const port = server.port;
      await server.stop();
      // The same users: the services reconnect with the credentials they have.
      server = await startNats({ port, storeDir: store.dir, auth: authOf(server) });
      const results = await all;
      expect(results.map((r) => r.outputs[0]?.resultId)).toEqual(
        tasks.map((t) => `res-${t.cacheKey}`),
      );
      await waitFor('the queue to be empty', async () => (await streamMessages(dr)) === 0);
    } finally {
      await Promise.all(workers.splice(0).map((x) => x.proc.stop(5_000)));
      await Promise.all(dispatchers.splice(0).map((x) => x.close()));
      await Promise.all(conns.splice(0).map((x) => x.close()));
      await server.stop();
      store.remove();
    }
  });
});
