// TaskConsumer against a real nats-server (a fresh one for this file, with the farm's users and
// role permissions), driven through the bus primitives the scheduler uses (the record service
// included: workers never write records): no scheduler, no mocks.
import type { Bus, TaskInit } from '@kiln/bus';
import {
  casRecord,
  connectNats,
  decodeResult,
  encodeTask,
  fromBase64,
  leaveRule,
  OFFER_WAIT_HEADER,
  offerSubject,
  openBus,
  serveRecords,
  TASK_STREAM,
  taskKey,
  workerInboxPrefix,
} from '@kiln/bus';
import { headers } from '@nats-io/transport-node';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { parsePlatform } from '@kiln/protocol';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ConsumerEvent, RunTask } from './task-consumer.js';
import { TaskConsumer } from './task-consumer.js';
import { enqueueRaw, recordOf } from './test-support/tasks.js';
import { sleepExecutor, startNats, testTask, waitFor } from '@kiln/testing';
import type { NatsServerHandle } from '@kiln/testing';

let nats: NatsServerHandle;
let nc: NatsConnection;
let bus: Bus;
let records: Subscription;
/** Every record change the record service made, as it told its owner (`onApplied`). */
const applied: { key: string; state: string; holder?: string; revision: number }[] = [];
const consumers: TaskConsumer[] = [];
const WORKERS = ['cancel-1', 'drain-1', 'drain-2', 'handback-1', 'offer-1', 'reg-1'];
WORKERS.push('route-amd64', 'route-arm64', 'stale-1', 'dup-1');

beforeAll(async () => {
  nats = await startNats({ auth: { workers: WORKERS } });
  nc = await connectNats(nats.url, nats.auth?.scheduler);
  bus = await openBus(nc);
  records = serveRecords(bus, {
    onApplied: (key, s) =>
      applied.push({ key, state: s.record.state, holder: s.record.holder, revision: s.revision }),
  });
});

afterEach(async () => {
  await Promise.all(consumers.splice(0).map((c) => c.close()));
});

afterAll(async () => {
  records?.unsubscribe();
  await nc?.close();
  await nats?.stop();
});

async function worker(
  id: string,
  platforms: string[],
  o: { slots?: number; runTask?: RunTask; events?: ConsumerEvent[] } = {},
): Promise<TaskConsumer> {
  const wnc = await connectNats(nats.url, {
    ...nats.auth?.workers[id],
    inboxPrefix: workerInboxPrefix(id),
  });
  const c = new TaskConsumer({
    nc: wnc,
    id,
    platforms: platforms.map((p) => ({ ...parsePlatform(p), emulated: false })),
    slots: o.slots ?? 1,
    heartbeatMs: 200,
    keepaliveMs: 100,
    runTask: o.runTask ?? sleepExecutor,
    onEvent: (e) => o.events?.push(e),
  });
  const close = c.close.bind(c);
  c.close = async () => {
    await close();
    await wnc.close();
  };
  await c.start();
  consumers.push(c);
  return c;
}

async function done(task: TaskInit) {
  const rec = await waitFor('task record done', async () => {
    const r = await recordOf(bus, task.cacheKey ?? '');
    return r && (r.state === 'done' || r.state === 'errored') ? r : undefined;
  });
  return { rec, result: decodeResult(fromBase64(rec.result ?? '')) };
}

async function streamMessages(): Promise<number> {
  return (await bus.jsm.streams.info(TASK_STREAM)).state.messages;
}

describe('TaskConsumer', () => {
  it('registers with its platforms and heartbeats', async () => {
    const c = await worker('reg-1', ['linux/arm64/v8', 'linux/amd64']);
    const first = await waitFor('registration', async () =>
      (await bus.workers.get(c.id))?.json<{ seq: number; platforms: unknown[] }>(),
    );
    expect(first.platforms).toEqual([
      { os: 'linux', architecture: 'arm64', emulated: false },
      { os: 'linux', architecture: 'amd64', emulated: false },
    ]);
    await waitFor(
      'a later heartbeat',
      async () => ((await bus.workers.get(c.id))?.json<{ seq: number }>().seq ?? 0) > first.seq,
    );
  });

  it('runs only the tasks of its platforms, and reports the result under its token', async () => {
    const amd = await worker('route-amd64', ['linux/amd64']);
    const arm = await worker('route-arm64', ['linux/arm64']);
    const tasks = [
      ...Array.from({ length: 4 }, () => testTask({ platform: 'linux/amd64' })),
      ...Array.from({ length: 4 }, () => testTask({ platform: 'linux/arm64' })),
    ];
    const recs = await Promise.all(tasks.map((t) => enqueueRaw(bus, t)));
    for (const [i, t] of tasks.entries()) {
      const { rec, result } = await done(t);
      expect(rec.state).toBe('done');
      expect(result.attemptToken).toBe(recs[i]?.attemptToken);
      expect(result.workerId).toBe(t.platform?.Architecture === 'amd64' ? amd.id : arm.id);
      expect(result.outputs[0]?.resultId).toBe(`res-${t.cacheKey}`);
    }
    await waitFor('the queue to be empty', async () => (await streamMessages()) === 0);
  });

  it("tells the record service's owner each change a worker's request made, as written", async () => {
    await worker('route-amd64', ['linux/amd64']);
    const t = testTask({ platform: 'linux/amd64' });
    await enqueueRaw(bus, t);
    await done(t);
    const key = taskKey(t.cacheKey ?? '');
    const mine = applied.filter((a) => a.key === key);
    expect(mine.map((a) => a.state)).toEqual(['running', 'done']);
    expect(mine.every((a) => a.holder === 'route-amd64')).toBe(true);
    // The revision given is the one in the bucket: the last change is the record as it is now.
    expect(mine[1]!.revision).toBe((await bus.tasks.get(key))?.revision);
    expect(mine[0]!.revision).toBeLessThan(mine[1]!.revision);
  });

  it('drops a queue copy whose token is not current, without running it', async () => {
    const ran: string[] = [];
    const events: ConsumerEvent[] = [];
    await worker('stale-1', ['linux/amd64'], {
      events,
      runTask: (t, s, p) => {
        ran.push(t.attemptToken);
        return sleepExecutor(t, s, p);
      },
    });
    const t = testTask();
    const rec = await enqueueRaw(bus, t);
    await done(t);
    // A duplicate of an attempt that is already done (an ack that was lost, a re-dispatch).
    await bus.js.publish(
      'kiln.task.linux.amd64',
      encodeTask({ ...t, attemptToken: rec.attemptToken, attempt: 1 }),
    );
    await waitFor('the stale copy to be dropped', () =>
      events.some((e) => e.type === 'stale' && e.why === 'claim'),
    );
    expect(ran).toEqual([rec.attemptToken]);
    await waitFor('the queue to be empty', async () => (await streamMessages()) === 0);
  });

  it('runs an attempt once when another copy of it arrives while it runs', async () => {
    const ran: string[] = [];
    const events: ConsumerEvent[] = [];
    await worker('dup-1', ['linux/amd64'], {
      slots: 2,
      events,
      runTask: (t, s, p) => {
        ran.push(t.attemptToken);
        return sleepExecutor(t, s, p);
      },
    });
    const t = testTask({ sleepMs: 1_000 });
    const rec = await enqueueRaw(bus, t);
    await waitFor('the first copy to run', () => ran.length === 1);
    // A second copy of the same attempt (a redelivery after a slow claim, a lost ack): the
    // scheduler would accept its claim too (same holder, same token), so only the worker can
    // tell it is already running it.
    await bus.js.publish(
      'kiln.task.linux.amd64',
      encodeTask({ ...t, attemptToken: rec.attemptToken, attempt: 1 }),
    );
    await done(t);
    await waitFor('the queue to be empty', async () => (await streamMessages()) === 0);
    expect(ran).toEqual([rec.attemptToken]);
    expect(events.filter((e) => e.type === 'claimed')).toHaveLength(1);
  });

  it('accepts an offer when it has a free slot and declines when busy past the wait', async () => {
    const c = await worker('offer-1', ['linux/amd64']);
    const t1 = testTask({ sleepMs: 1_500 });
    // Record only (no queue message): an offered attempt.
    const rec1 = await enqueueRaw(bus, t1, { offer: true });
    const r1 = await nc.request(
      offerSubject(c.id),
      encodeTask({ ...t1, attemptToken: rec1.attemptToken, attempt: 1 }),
      {
        timeout: 5_000,
        headers: waitHeader(50),
      },
    );
    expect(r1.json()).toEqual({ accepted: true });
    expect((await recordOf(bus, t1.cacheKey ?? ''))?.holder).toBe(c.id);
    const t2 = testTask();
    const rec2 = await enqueueRaw(bus, t2, { offer: true });
    const r2 = await nc.request(
      offerSubject(c.id),
      encodeTask({ ...t2, attemptToken: rec2.attemptToken, attempt: 1 }),
      {
        timeout: 5_000,
        headers: waitHeader(50),
      },
    );
    expect(r2.json()).toEqual({ accepted: false, reason: 'busy' });
    expect((await recordOf(bus, t2.cacheKey ?? ''))?.state).toBe('queued');
    await done(t1);
  });

  it('aborts a running task whose record is cancelled, and reports nothing', async () => {
    const events: ConsumerEvent[] = [];
    let aborted = false;
    await worker('cancel-1', ['linux/amd64'], {
      events,
      runTask: async (t, s, p) => {
        const out = await sleepExecutor(t, s, p);
        aborted = s.aborted;
        return out;
      },
    });
    const t = testTask({ sleepMs: 30_000 });
    await enqueueRaw(bus, t);
    await waitFor(
      'the claim',
      async () => (await recordOf(bus, t.cacheKey ?? ''))?.state === 'running',
    );
    await casRecord(bus.tasks, taskKey(t.cacheKey ?? ''), (r) => leaveRule(r, 'b1'));
    await waitFor('the stale event', () =>
      events.some((e) => e.type === 'stale' && e.why === 'keepalive'),
    );
    expect(aborted).toBe(true);
    expect((await recordOf(bus, t.cacheKey ?? ''))?.state).toBe('cancelled');
    await waitFor('the queue to be empty', async () => (await streamMessages()) === 0);
  });

  it('drain finishes the task it holds and takes no new one', async () => {
    const events: ConsumerEvent[] = [];
    const c = await worker('drain-1', ['linux/amd64'], { events });
    const t1 = testTask({ sleepMs: 800 });
    await enqueueRaw(bus, t1);
    await waitFor(
      'the claim',
      async () => (await recordOf(bus, t1.cacheKey ?? ''))?.holder === c.id,
    );
    const draining = c.drain();
    const t2 = testTask();
    await enqueueRaw(bus, t2);
    await draining;
    expect((await recordOf(bus, t1.cacheKey ?? ''))?.state).toBe('done');
    expect((await recordOf(bus, t2.cacheKey ?? ''))?.state).toBe('queued');
    expect(
      events.filter((e) => e.type === 'claimed').map((e) => (e as { taskId: string }).taskId),
    ).toEqual([t1.taskId]);
    expect(await bus.workers.get(c.id).then((e) => e?.operation)).not.toBe('PUT');
    // The new task is still on the queue for another worker.
    const other = await worker('drain-2', ['linux/amd64']);
    const { result } = await done(t2);
    expect(result.workerId).toBe(other.id);
  });

  it('hands back a task that outlives the drain timeout', async () => {
    const events: ConsumerEvent[] = [];
    const c = await worker('handback-1', ['linux/amd64'], { events });
    const t = testTask({ sleepMs: 30_000 });
    await enqueueRaw(bus, t);
    await waitFor(
      'the claim',
      async () => (await recordOf(bus, t.cacheKey ?? ''))?.holder === c.id,
    );
    await c.drain(100);
    const rec = await recordOf(bus, t.cacheKey ?? '');
    expect(rec).toMatchObject({ state: 'queued', placement: 'released' });
    expect(events.some((e) => e.type === 'handed-back')).toBe(true);
    await waitFor('the queue to be empty', async () => (await streamMessages()) === 0);
  });
});

function waitHeader(ms: number) {
  const h = headers();
  h.set(OFFER_WAIT_HEADER, String(ms));
  return h;
}
