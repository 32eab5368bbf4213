/**
 * The scheduler's `--metrics-listen`, scraped over HTTP from a real process while a real worker
 * runs builds: Prometheus text exposition with the farm's counters and gauges, changed by a
 * build run and by the same build answered from the cache.
 */
import { join } from 'node:path';
import { KilnClient } from '@kiln/client';
import { LinuxAmd64, marshal, mkfile, scratch } from '@kiln/llb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, startNats, waitFor } from '../harness/index.js';
import { bundleEntries, startScheduler, startWorker, uid } from '../chaos/farm.js';
import type { Entries } from '../chaos/farm.js';

let tmp: { dir: string; remove: () => void };
let entries: Entries;

beforeAll(async () => {
  tmp = makeTempDir('metrics');
  entries = await bundleEntries(tmp.dir);
});

afterAll(() => tmp?.remove());

/** One sample's value from a text exposition (`name{labels} value`); undefined when absent. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('scheduler and worker metrics', () => {
  it('exposes builds, vertices, pending tasks and worker slots in Prometheus text', async () => {
    const nats = await startNats();
    const dir = join(tmp.dir, uid());
    const storeDir = join(dir, 'store');
    const s = await startScheduler(entries, nats.url, {
      env: { KILN_METRICS_LISTEN: '127.0.0.1:0', KILN_STORE_DIR: storeDir },
    });
    const w = await startWorker(entries, nats.url, {
      id: 'metrics-1',
      stateDir: join(dir, 'state'),
      storeDir,
      args: ['--slots', '3', '--metrics-listen', '127.0.0.1:0'],
    });
    const client = await KilnClient.connect(s.addr);
    try {
      const line = s.lines.find((l) => l.msg === 'metrics listening');
      expect(line).toBeDefined();
      const url = `http://127.0.0.1:${String(line!.port)}/metrics`;
      const scrape = async (): Promise<string> => {
        const r = await fetch(url);
        expect(r.status).toBe(200);
        expect(r.headers.get('content-type')).toContain('text/plain; version=0.0.4');
        return r.text();
      };
      const before = await scrape();
      expect(before).toContain('# TYPE kiln_builds_started_total counter');
      expect(before).toContain('# TYPE kiln_tasks_pending gauge');
      expect(sample(before, 'kiln_builds_started_total')).toBe(0);
      expect(sample(before, 'kiln_builds_finished_total{outcome="success"}')).toBe(0);
      expect(sample(before, 'kiln_vertices_total{result="run"}')).toBe(0);
      await waitFor('the worker in the metrics', async () =>
        sample(await scrape(), 'kiln_worker_slots{worker="metrics-1"}') === 3 ? true : undefined,
      );

      const def = marshal(scratch().file(mkfile(`/m-${uid()}`, 0o644, 'metrics')), {
        platform: LinuxAmd64,
      });
      await client.solve({ buildId: `m-${uid()}`, definition: def });
      const once = await scrape();
      expect(sample(once, 'kiln_builds_started_total')).toBe(1);
      expect(sample(once, 'kiln_builds_finished_total{outcome="success"}')).toBe(1);
      expect(sample(once, 'kiln_vertices_total{result="run"}')).toBe(1);
      expect(sample(once, 'kiln_vertices_total{result="cached"}')).toBe(0);

      await client.solve({ buildId: `m-${uid()}`, definition: def });
      // The slots come from the worker's registration, rewritten at each heartbeat: one written
      // while the first build's task ran still counts its slot for up to a heartbeat.
      const twice = await waitFor(
        'the worker idle in the metrics',
        async () => {
          const text = await scrape();
          return sample(text, 'kiln_worker_slots_busy{worker="metrics-1"}') === 0
            ? text
            : undefined;
        },
        { intervalMs: 200 },
      );
      expect(sample(twice, 'kiln_builds_finished_total{outcome="success"}')).toBe(2);
      expect(sample(twice, 'kiln_vertices_total{result="cached"}')).toBe(1);
      // No task left behind: the queue gauge has no platform with work.
      expect(twice).not.toMatch(/^kiln_tasks_pending\{[^}]*\} [1-9]/m);

      // The worker's own listener: its slots, and the bytes its write-behind gave the store.
      const wline = w.lines.find((l) => l.msg === 'metrics listening');
      expect(wline).toBeDefined();
      const wurl = `http://127.0.0.1:${String(wline!.port)}/metrics`;
      const wtext = async (): Promise<string> => (await fetch(wurl)).text();
      expect(sample(await wtext(), 'kiln_worker_slots')).toBe(3);
      expect(sample(await wtext(), 'kiln_worker_slots_busy')).toBe(0);
      await waitFor('the worker to count bytes written to the store', async () =>
        (sample(await wtext(), 'kiln_worker_store_written_bytes_total') ?? 0) > 0
          ? true
          : undefined,
      );
      expect(await wtext()).toContain('# TYPE kiln_worker_gc_collections_total counter');
      // health: false on a metrics-only listener
      expect((await fetch(wurl.replace('/metrics', '/healthz'))).status).toBe(404);

      const ready = await fetch(url.replace('/metrics', '/readyz'));
      expect(await ready.json()).toEqual({ ready: true, checks: { control: true } });
    } finally {
      client.close();
      await w.proc.stop(10_000);
      await s.proc.stop(5_000);
      await nats.stop();
    }
  });
});
