/**
 * The store's garbage collector over 100,000 records (issue 13): `kiln-cache-store`'s
 * `collectStore` against a real nats-server holding the cache index and a filesystem store
 * holding one blob per record plus 10% unreferenced, old blobs (the ones a run deletes).
 *
 * Baseline, measured in the same run on the same data: the floor of any mark and sweep, one pass
 * over the index (a KV watch, the values not parsed) plus one listing of the store (readdir and a
 * stat per blob). Reported: each run's time and its ratio to the floor, and the process's peak
 * RSS above what it was before the run (sampled every 20 ms). `KILN_BENCH_GC_RECORDS` changes N.
 */
import { createHash, randomUUID } from 'node:crypto';
import { mkdirSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { TASKS_BUCKET, encodeResult, openBus } from '@kiln/bus';
import { collectStore, liveDigests } from '@kiln/cache-store';
import { FsBlobStore } from '@kiln/store';
import type { Digest } from '@kiln/store';
import { makeTempDir, startNats } from '@kiln/testing';
import { Kvm } from '@nats-io/kv';
import { connect } from '@nats-io/transport-node';
import { printTable } from './table.js';

const hex = (s: string): string => createHash('sha256').update(s).digest('hex');

/** Runs `fn`, sampling RSS; returns its time and the peak RSS above the start, in MB. */
async function measured<T>(fn: () => Promise<T>): Promise<{ ms: number; rssMb: number; out: T }> {
  const base = process.memoryUsage.rss();
  let peak = base;
  const t = setInterval(() => (peak = Math.max(peak, process.memoryUsage.rss())), 20);
  const t0 = performance.now();
  try {
    const out = await fn();
    peak = Math.max(peak, process.memoryUsage.rss());
    return { ms: performance.now() - t0, rssMb: (peak - base) / 2 ** 20, out };
  } finally {
    clearInterval(t);
  }
}

export async function runGcBench(
  n = Number(process.env.KILN_BENCH_GC_RECORDS ?? 100_000),
): Promise<void> {
  const tmp = makeTempDir('gc-bench');
  const nats = await startNats();
  const nc = await connect({ servers: nats.url, noAsyncTraces: true });
  try {
    const bus = await openBus(nc);
    const root = join(tmp.dir, 'store');
    const dir = join(root, 'blobs', 'sha256');
    mkdirSync(dir, { recursive: true });
    const old = new Date(Date.now() - 7 * 24 * 3600_000);
    const extra = Math.round(n / 10);
    // The store: blob i for record i, then `extra` blobs no record names; all a week old.
    for (let i = 0; i < n + extra; i++) {
      const p = join(dir, hex(`blob ${i}`));
      writeFileSync(p, `blob ${i}`);
      utimesSync(p, old, old);
    }
    // The index: one done record per blob i < n, its result naming the blob as its layer.
    const t0 = performance.now();
    for (let i = 0; i < n; i += 1_000) {
      await Promise.all(
        Array.from({ length: Math.min(1_000, n - i) }, (_, j) => {
          const digest: Digest = `sha256:${hex(`blob ${i + j}`)}`;
          const cacheKey = `sha256:${hex(`key ${i + j}`)}`;
          const result = encodeResult({
            taskId: randomUUID(),
            outputs: [
              {
                resultId: digest,
                layers: [{ digest, diffId: digest, size: 10, mediaType: 'application/x-bench' }],
              },
            ],
          });
          const rec = {
            v: 1,
            taskId: randomUUID(),
            cacheKey,
            platform: 'linux/amd64',
            attempt: 1,
            attemptToken: randomUUID(),
            state: 'done',
            builds: [],
            task: '',
            result: Buffer.from(result).toString('base64'),
            createdAt: 0,
            dispatchedAt: 0,
          };
          return bus.tasks.put(`t.${hex(cacheKey)}`, JSON.stringify(rec));
        }),
      );
    }
    const setupS = (performance.now() - t0) / 1000;
    const store = new FsBlobStore({ root });
    const readAll = async (): Promise<{ records: number; blobs: number }> => {
      const kv = await new Kvm(nc).open(TASKS_BUCKET);
      let records = 0;
      const it = await kv.watch();
      for await (const e of it) {
        records += e.length > 0 ? 1 : 0;
        if (!e.delta) break;
      }
      it.stop();
      let blobs = 0;
      for await (const _ of store.list()) blobs += 1;
      return { records, blobs };
    };
    await readAll(); // the same caches warm for every run below
    const floor = await measured(readAll);
    const gc = { store, live: () => liveDigests(nc), keepDurationMs: 24 * 3600_000 };
    const dry = await measured(() => collectStore({ ...gc, dryRun: true }));
    const run = await measured(() => collectStore(gc));
    const again = await measured(() => collectStore(gc));
    const row = (
      what: string,
      m: { ms: number; rssMb: number },
      live: number | string,
      deleted: number | string,
    ): string[] => [
      what,
      String(Math.round(m.ms)),
      `${(m.ms / floor.ms).toFixed(2)}x`,
      m.rssMb.toFixed(0),
      String(live),
      String(deleted),
    ];
    printTable(
      `store GC over ${n.toLocaleString('en')} records and ${(n + extra).toLocaleString('en')} blobs (index written in ${setupS.toFixed(1)} s)`,
      ['run', 'ms', 'vs floor', 'peak RSS +MB', 'live', 'deleted'],
      [
        row('floor: read the index, list the store', floor, floor.out.records, '-'),
        row('collectStore --dry-run', dry, dry.out.live, dry.out.deleted),
        row(
          `collectStore (deletes ${extra.toLocaleString('en')})`,
          run,
          run.out.live,
          run.out.deleted,
        ),
        row('collectStore again (nothing to delete)', again, again.out.live, again.out.deleted),
      ],
    );
  } finally {
    await nc.close();
    await nats.stop();
    tmp.remove();
  }
}
