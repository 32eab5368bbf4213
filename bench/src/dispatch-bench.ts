/**
 * Dispatch over NATS JetStream (issue 5): the scheduler's Dispatcher and in-process worker
 * TaskConsumers on a fresh nats-server, with trivial tasks (no-op or sleep) so that op execution
 * is not what is measured.
 *
 * Baseline, measured in the same run on the same server: a bare JetStream round trip (publish to
 * a work-queue stream -> a waiting pull consumer receives it), and a bare publish + consume + ack
 * throughput. Targets: ready->claimed p50 < 5 ms, p99 < 25 ms; >= 1,000 no-op tasks/s; makespan
 * of 64 x 1 s tasks over 8 workers <= 1.10x the ideal 8 s; >= 90% affinity hits and >= 80% fewer
 * bytes fetched than with affinity off.
 */
import { performance } from 'node:perf_hooks';
import { randomUUID } from 'node:crypto';
import type { TaskInit } from '@kiln/bus';
import { Dispatcher } from '@kiln/scheduler';
import type { DispatchEvent } from '@kiln/scheduler';
import type { RunTask, TaskOutcome } from '@kiln/bus';
import { TaskConsumer } from '@kiln/bus';
import { sleepExecutor } from '@kiln/testing';
import { startNats } from '@kiln/test';
import { AckPolicy, jetstream, jetstreamManager, RetentionPolicy } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';
import { printTable } from './table.js';

type Row = (string | number)[];

/**
 * Connection options of every connection here, baseline included. `noAsyncTraces`: nats.js then
 * does not capture a stack (an Error) per request for context on failures, which costs ~10% of
 * the dispatch path's CPU (each task is four JetStream requests); the services can set it too.
 */
const CONNECT = { maxReconnectAttempts: -1, noAsyncTraces: true } as const;

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
}

function task(
  o: {
    sleepMs?: number;
    inputs?: { resultId: string; holderWorker?: string }[];
    output?: string;
  } = {},
): TaskInit {
  const description: Record<string, string> = {};
  if (o.sleepMs) description['kiln.test.sleep-ms'] = String(o.sleepMs);
  if (o.output) description['kiln.test.output'] = o.output;
  return {
    taskId: randomUUID(),
    buildId: 'bench',
    cacheKey: `sha256:${randomUUID().replace(/-/g, '')}`,
    platform: { OS: 'linux', Architecture: 'amd64' },
    metadata: { description },
    inputs: o.inputs ?? [],
  };
}

interface Farm {
  dispatcher: Dispatcher;
  consumers: TaskConsumer[];
  close(): Promise<void>;
}

async function farm(
  url: string,
  o: {
    workers: number;
    slots: number;
    runTask: (workerId: string) => RunTask;
    affinity?: boolean;
    onEvent?: (e: DispatchEvent) => void;
  },
): Promise<Farm> {
  const conns: NatsConnection[] = [];
  const conn = async (): Promise<NatsConnection> => {
    const c = await connect({ servers: url, ...CONNECT });
    conns.push(c);
    return c;
  };
  const dispatcher = await Dispatcher.start({
    nc: await conn(),
    affinity: o.affinity ?? true,
    onEvent: o.onEvent,
    affinityDelayMs: 100,
  });
  const consumers: TaskConsumer[] = [];
  for (let i = 0; i < o.workers; i++) {
    const id = `bench-${randomUUID().slice(0, 8)}-${i}`;
    const c = new TaskConsumer({
      nc: await conn(),
      id,
      platforms: [{ os: 'linux', architecture: 'amd64', emulated: false }],
      slots: o.slots,
      runTask: o.runTask(id),
    });
    await c.start();
    consumers.push(c);
  }
  const deadline = Date.now() + 10_000;
  while (dispatcher.liveWorkers().length < o.workers) {
    if (Date.now() > deadline) throw new Error('workers did not register');
    await new Promise((r) => setTimeout(r, 10));
  }
  return {
    dispatcher,
    consumers,
    close: async () => {
      await Promise.all(consumers.map((c) => c.close()));
      await dispatcher.close();
      await Promise.all(conns.map((c) => c.close()));
    },
  };
}

/**
 * Bare JetStream: publish -> waiting pull consumer, one at a time; then bulk throughput, the
 * median of `windows` windows of 3,000 messages (after one to warm up).
 */
async function baseline(
  url: string,
  n: number,
  windows: number,
): Promise<{ p50: number; p99: number; perSec: number; all: number[] }> {
  const nc = await connect({ servers: url, ...CONNECT });
  const jsm = await jetstreamManager(nc);
  const js = jetstream(nc);
  await jsm.streams.add({
    name: 'BENCH',
    subjects: ['bench.>'],
    retention: RetentionPolicy.Workqueue,
  });
  await jsm.consumers.add('BENCH', {
    durable_name: 'b',
    ack_policy: AckPolicy.Explicit,
    filter_subject: 'bench.x',
  });
  const consumer = await js.consumers.get('BENCH', 'b');
  const lat: number[] = [];
  for (let i = 0; i < n; i++) {
    const got = consumer.next({ expires: 5_000 });
    const t0 = performance.now();
    await js.publish('bench.x', new Uint8Array(64));
    const m = await got;
    lat.push(performance.now() - t0);
    m?.ack();
  }
  const bulk = 3_000;
  const all: number[] = [];
  // One consumer (an iterator, as in earlier runs) for every window; window 0 warms up.
  const msgs = await consumer.consume({ max_messages: 256 });
  const it = msgs[Symbol.asyncIterator]();
  for (let w = 0; w <= windows; w++) {
    const t0 = performance.now();
    const consumed = (async () => {
      for (let k = 0; k < bulk; k++) {
        const r = await it.next();
        if (r.done) throw new Error('baseline consumer stopped');
        r.value.ack();
      }
    })();
    await Promise.all(
      Array.from({ length: bulk }, () => js.publish('bench.x', new Uint8Array(64))),
    );
    await consumed;
    if (w > 0) all.push(bulk / ((performance.now() - t0) / 1000));
  }
  msgs.stop(); // (close() would wait for the suspended iterator)
  await jsm.streams.delete('BENCH');
  await nc.close();
  return { p50: pct(lat, 50), p99: pct(lat, 99), perSec: pct(all, 50), all };
}

export async function runDispatchBench(): Promise<void> {
  const nats = await startNats();
  try {
    const windows = 3;
    const base = await baseline(nats.url, 300, windows);

    // 1. Latency ready -> claimed (runTask entered), idle farm, one task at a time.
    const started = new Map<string, number>();
    const noop =
      () =>
      (t: Parameters<RunTask>[0]): Promise<TaskOutcome> => {
        started.set(t.taskId, performance.now());
        return Promise.resolve({ outputs: [{ resultId: `res-${t.cacheKey}` }] });
      };
    let f = await farm(nats.url, { workers: 4, slots: 4, runTask: () => noop() });
    const lat: number[] = [];
    for (let i = 0; i < 300; i++) {
      const t = task();
      const t0 = performance.now();
      await f.dispatcher.submit(t);
      lat.push((started.get(t.taskId ?? '') ?? NaN) - t0);
    }
    // Same through an offer to the holder of the task's input.
    const holder = f.consumers[0]?.id ?? '';
    const latOffer: number[] = [];
    for (let i = 0; i < 200; i++) {
      const t = task({ inputs: [{ resultId: 'x', holderWorker: holder }] });
      const t0 = performance.now();
      await f.dispatcher.submit(t);
      latOffer.push((started.get(t.taskId ?? '') ?? NaN) - t0);
    }
    await f.close();

    // 2. Throughput of no-op tasks: 8 workers x 8 slots, 512 in flight; after 1,000 tasks to
    //    warm up, the median of three windows of 3,000 (the machine is shared: one window can
    //    land on someone else's burst; the slowest is printed too).
    f = await farm(nats.url, { workers: 8, slots: 8, runTask: () => noop() });
    const flood = async (n: number): Promise<void> => {
      let next = 0;
      await Promise.all(
        Array.from({ length: 512 }, async () => {
          while (next < n) {
            next++;
            await f.dispatcher.submit(task());
          }
        }),
      );
    };
    await flood(1_000); // warm-up: JIT, connections, consumers
    const total = 3_000;
    const rates: number[] = [];
    for (let w = 0; w < windows; w++) {
      const t0 = performance.now();
      await flood(total);
      rates.push(total / ((performance.now() - t0) / 1000));
    }
    const tasksPerSec = pct(rates, 50);
    await f.close();

    // 3. Makespan: 64 independent 1 s tasks over 8 single-slot workers; ideal 8 s.
    f = await farm(nats.url, { workers: 8, slots: 1, runTask: () => sleepExecutor });
    const m0 = performance.now();
    await Promise.all(
      Array.from({ length: 64 }, () => f.dispatcher.submit(task({ sleepMs: 1_000 }))),
    );
    const makespan = (performance.now() - m0) / 1000;
    await f.close();

    // 4. Affinity on vs off: 32 independent chains of 4 steps (a build's stages) over 8 workers x
    //    4 slots; each step's input is the previous step's result (100 MB, simulated). A step run
    //    where its input is not held fetches it (and then holds it). Only the placement differs.
    const aff = async (
      on: boolean,
    ): Promise<{ hits: number; deps: number; fetchedMb: number; declined: number }> => {
      const held = new Map<string, Set<string>>();
      let hits = 0;
      let deps = 0;
      let fetched = 0;
      let declined = 0;
      const run =
        (workerId: string): RunTask =>
        async (t, s, p) => {
          const mine = held.get(workerId) ?? new Set<string>();
          held.set(workerId, mine);
          if (t.inputs.length > 0) {
            deps++;
            const missing = t.inputs.map((i) => i.resultId ?? '').filter((id) => !mine.has(id));
            if (missing.length === 0) hits++;
            fetched += missing.length * 100;
            for (const id of missing) mine.add(id);
          }
          const out = await sleepExecutor(t, s, p);
          for (const o of out.outputs ?? []) if (o.resultId) mine.add(o.resultId);
          return out;
        };
      const fa = await farm(nats.url, {
        workers: 8,
        slots: 4,
        runTask: run,
        affinity: on,
        onEvent: (e) => {
          if (e.type === 'offer-declined') declined++;
        },
      });
      await Promise.all(
        Array.from({ length: 32 }, async (_, chain) => {
          let prev: { resultId: string; holderWorker: string } | undefined;
          for (let step = 0; step < 4; step++) {
            const r = await fa.dispatcher.submit(
              task({
                sleepMs: 50,
                output: `c${chain}-s${step}-${randomUUID()}`,
                inputs: prev ? [prev] : [],
              }),
              { preferredWorkers: prev ? [prev.holderWorker] : [] },
            );
            prev = { resultId: r.outputs[0]?.resultId ?? '', holderWorker: r.workerId };
          }
        }),
      );
      await fa.close();
      return { hits: hits / deps, deps, fetchedMb: fetched, declined };
    };
    const on = await aff(true);
    const off = await aff(false);

    const rows: Row[] = [
      [
        'ready->claimed p50 (queue)',
        `${lat.length} tasks`,
        `${pct(lat, 50).toFixed(2)} ms`,
        `${base.p50.toFixed(2)} ms`,
        `${(pct(lat, 50) / base.p50).toFixed(2)}x`,
        '< 5 ms',
        pct(lat, 50) < 5 ? 'yes' : 'no',
      ],
      [
        'ready->claimed p99 (queue)',
        `${lat.length} tasks`,
        `${pct(lat, 99).toFixed(2)} ms`,
        `${base.p99.toFixed(2)} ms`,
        `${(pct(lat, 99) / base.p99).toFixed(2)}x`,
        '< 25 ms',
        pct(lat, 99) < 25 ? 'yes' : 'no',
      ],
      [
        'ready->claimed p50 (offer)',
        `${latOffer.length} tasks`,
        `${pct(latOffer, 50).toFixed(2)} ms`,
        `${base.p50.toFixed(2)} ms`,
        `${(pct(latOffer, 50) / base.p50).toFixed(2)}x`,
        '< 5 ms',
        pct(latOffer, 50) < 5 ? 'yes' : 'no',
      ],
      [
        'ready->claimed p99 (offer)',
        `${latOffer.length} tasks`,
        `${pct(latOffer, 99).toFixed(2)} ms`,
        `${base.p99.toFixed(2)} ms`,
        `${(pct(latOffer, 99) / base.p99).toFixed(2)}x`,
        '< 25 ms',
        pct(latOffer, 99) < 25 ? 'yes' : 'no',
      ],
      [
        'no-op throughput (median)',
        `${windows} x ${total} tasks, 8x8 slots; slowest ${Math.min(...rates).toFixed(0)}/s`,
        `${tasksPerSec.toFixed(0)} tasks/s`,
        `${base.perSec.toFixed(0)} msgs/s`,
        `${(tasksPerSec / base.perSec).toFixed(2)}x`,
        '>= 1,000/s',
        tasksPerSec >= 1000 ? 'yes' : 'no',
      ],
      [
        'makespan 64 x 1 s / 8 workers',
        '64 tasks',
        `${makespan.toFixed(2)} s`,
        '8.00 s (ideal)',
        `${(makespan / 8).toFixed(3)}x`,
        '<= 1.10x',
        makespan / 8 <= 1.1 ? 'yes' : 'no',
      ],
      [
        'affinity hits (on)',
        `${on.deps} dependent steps, ${on.declined} offers declined`,
        `${(on.hits * 100).toFixed(1)}%`,
        `${(off.hits * 100).toFixed(1)}% (off)`,
        '',
        '>= 90%',
        on.hits >= 0.9 ? 'yes' : 'no',
      ],
      [
        'bytes fetched (on vs off)',
        '100 MB per input',
        `${on.fetchedMb} MB`,
        `${off.fetchedMb} MB (off)`,
        `${off.fetchedMb ? (1 - on.fetchedMb / off.fetchedMb) * 100 : 0}% fewer`.replace(
          /(\.\d)\d+%/,
          '$1%',
        ),
        '>= 80% fewer',
        off.fetchedMb > 0 && on.fetchedMb <= off.fetchedMb * 0.2 ? 'yes' : 'no',
      ],
    ];
    printTable(
      'Dispatch over NATS JetStream (baseline = bare JetStream publish -> pull consumer round trip / publish+consume+ack throughput, same server)',
      ['case', 'size', 'kiln', 'baseline', 'ratio', 'target', 'ok'],
      rows,
    );
  } finally {
    await nats.stop();
  }
}
