/**
 * Health of real processes: the scheduler's `grpc.health.v1.Health` (Check and Watch, SERVING
 * once listening, NOT_SERVING from SIGTERM on), the worker's `--health-listen` HTTP `/healthz` and
 * `/readyz` (ready once registered; not ready while NATS is away), `--help`, and a busy port
 * ending in one typed line. Service entries bundled from source (the chaos suites' farm helpers).
 */
import { spawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import type { Server } from 'node:net';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { connectNats, openBus } from '@kiln/bus';
import { healthService } from '@kiln/protocol';
import { FsBlobStore } from '@kiln/store';
import type { HealthCheckResponse } from '@kiln/protocol';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  bundleEntries as bundleFromSource,
  makeTempDir,
  spawnManaged,
  startNats,
  waitFor,
} from '../harness/index.js';
import { bundleEntries, startScheduler, startWorker, uid } from '../chaos/farm.js';
import type { Entries } from '../chaos/farm.js';

let tmp: { dir: string; remove: () => void };
let entries: Entries;
let cacheStore: string;

beforeAll(async () => {
  tmp = makeTempDir('health');
  entries = await bundleEntries(tmp.dir);
  cacheStore = (
    await bundleFromSource({ 'kiln-cache-store': 'services/cache-store/src/main.ts' }, tmp.dir)
  )['kiln-cache-store']!;
});

afterAll(() => tmp?.remove());

type HealthResponse = HealthCheckResponse;
type HealthClient = grpc.Client & {
  check(
    req: { service: string },
    cb: (err: grpc.ServiceError | null, res?: HealthResponse) => void,
  ): void;
  watch(req: { service: string }): grpc.ClientReadableStream<HealthResponse>;
};
const HealthClientCtor = grpc.makeGenericClientConstructor(
  healthService,
  'Health',
) as unknown as new (addr: string, creds: grpc.ChannelCredentials) => HealthClient;

function check(c: HealthClient, service: string): Promise<string> {
  return new Promise((resolve, reject) =>
    c.check({ service }, (err, res) => (err ? reject(err) : resolve(res!.status))),
  );
}

/** A port some other listener holds for the duration of `fn`. */
async function withBusyPort<T>(fn: (port: number) => T | Promise<T>): Promise<T> {
  const srv: Server = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  try {
    return await fn((srv.address() as { port: number }).port);
  } finally {
    srv.close();
  }
}

describe('scheduler health', () => {
  it('answers Check and Watch SERVING, and Watch sees NOT_SERVING on SIGTERM', async () => {
    const nats = await startNats();
    try {
      const s = await startScheduler(entries, nats.url);
      const c = new HealthClientCtor(s.addr, grpc.credentials.createInsecure());
      try {
        expect(await check(c, '')).toBe('SERVING');
        expect(await check(c, 'kiln.control.v1.Control')).toBe('SERVING');
        await expect(check(c, 'no.such.Service')).rejects.toMatchObject({
          code: grpc.status.NOT_FOUND,
        });
        const seen: string[] = [];
        const watch = c.watch({ service: '' });
        watch.on('data', (r: HealthResponse) => seen.push(r.status));
        watch.on('error', () => undefined); // the server ends the stream when it stops
        await waitFor('Watch to report SERVING', () => seen.includes('SERVING'));
        s.proc.kill('SIGTERM');
        await waitFor('Watch to report NOT_SERVING', () => seen.includes('NOT_SERVING'));
        expect(seen.indexOf('NOT_SERVING')).toBeGreaterThan(seen.indexOf('SERVING'));
        expect((await s.proc.exited).code).toBe(0);
      } finally {
        c.close();
        await s.proc.stop(5_000);
      }
    } finally {
      await nats.stop();
    }
  });

  it('prints usage for --help and one typed line for a busy port', async () => {
    const help = spawnSync(process.execPath, [entries.scheduler, '--help'], { encoding: 'utf8' });
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/^usage: kiln-scheduler/);
    expect(help.stdout).toContain('--listen');
    expect(help.stdout).toContain('--nats-user');
    const nats = await startNats();
    try {
      await withBusyPort((port) => {
        const r = spawnSync(process.execPath, [entries.scheduler], {
          encoding: 'utf8',
          env: {
            ...process.env,
            KILN_NATS_URL: nats.url,
            KILN_SCHEDULER_LISTEN: `127.0.0.1:${port}`,
          },
          timeout: 60_000,
        });
        expect(r.status).toBe(2);
        expect(r.stderr).toBe(
          `kiln-scheduler: control api cannot listen on 127.0.0.1:${port}: address already in ` +
            'use (another process has this port) [LISTEN_FAILED]\n',
        );
      });
    } finally {
      await nats.stop();
    }
  });
});

describe('worker health', () => {
  it('serves /healthz and /readyz once registered; not ready while NATS is away', async () => {
    const nats = await startNats();
    const dir = join(tmp.dir, uid());
    try {
      const w = await startWorker(entries, nats.url, {
        id: 'health-1',
        stateDir: join(dir, 'state'),
        storeDir: join(dir, 'store'),
        args: ['--health-listen', '127.0.0.1:0'],
      });
      try {
        const line = w.lines.find((l) => l.msg === 'health listening');
        expect(line).toBeDefined();
        const base = `http://127.0.0.1:${String(line!.port)}`;
        const live = await fetch(`${base}/healthz`);
        expect(live.status).toBe(200);
        const ready = await fetch(`${base}/readyz`);
        expect(ready.status).toBe(200);
        expect(await ready.json()).toEqual({
          ready: true,
          checks: { nats: true, registered: true, runtime: true },
        });
        expect((await fetch(`${base}/nope`)).status).toBe(404);
        await nats.stop();
        const down = await waitFor('readyz to fail without NATS', async () => {
          const r = await fetch(`${base}/readyz`);
          return r.status === 503
            ? ((await r.json()) as { checks: Record<string, boolean> })
            : undefined;
        });
        expect(down.checks.nats).toBe(false);
        expect((await fetch(`${base}/healthz`)).status).toBe(200);
      } finally {
        await w.proc.stop(10_000);
      }
    } finally {
      await nats.stop();
    }
  });

  it('ends in one typed line when the health port is busy', async () => {
    const nats = await startNats();
    const dir = join(tmp.dir, uid());
    try {
      await withBusyPort((port) => {
        const r = spawnSync(
          process.execPath,
          [
            entries.worker,
            '--state-dir',
            join(dir, 'state'),
            '--store-dir',
            join(dir, 'store'),
            '--health-listen',
            `127.0.0.1:${port}`,
          ],
          { encoding: 'utf8', env: { ...process.env, KILN_NATS_URL: nats.url }, timeout: 60_000 },
        );
        expect(r.status).toBe(1);
        expect(r.stderr).toBe(
          `kiln worker: health listener cannot listen on 127.0.0.1:${port}: address already in ` +
            'use (another process has this port) [LISTEN_FAILED]\n',
        );
      });
    } finally {
      await nats.stop();
    }
  });
});

describe('store collector health', () => {
  it('serves /readyz with NATS and the store reachable, 503 without NATS', async () => {
    const nats = await startNats();
    const lines: Record<string, unknown>[] = [];
    const proc = spawnManaged(
      process.execPath,
      [cacheStore, '--store-dir', join(tmp.dir, uid()), '--health-listen', '127.0.0.1:0'],
      {
        name: 'cache-store',
        env: { ...process.env, KILN_NATS_URL: nats.url },
        onLine: (line, stream) => {
          if (stream === 'stdout' && line.startsWith('{'))
            lines.push(JSON.parse(line) as Record<string, unknown>);
        },
      },
    );
    try {
      const line = await waitFor('the health listener', () => {
        if (proc.hasExited()) throw new Error(`cache store exited:\n${proc.output()}`);
        return lines.find((l) => l.msg === 'health listening');
      });
      const readyz = `http://127.0.0.1:${String(line.port)}/readyz`;
      const ready = await fetch(readyz);
      expect(ready.status).toBe(200);
      expect(await ready.json()).toEqual({ ready: true, checks: { nats: true, store: true } });
      await nats.stop();
      const down = await waitFor('readyz to fail without NATS', async () => {
        const r = await fetch(readyz);
        return r.status === 503
          ? ((await r.json()) as { checks: Record<string, boolean> })
          : undefined;
      });
      expect(down.checks).toEqual({ nats: false, store: true });
    } finally {
      await proc.stop(5_000);
      await nats.stop();
    }
  });
});

describe('store collector metrics', () => {
  it('serves /metrics beside /readyz: runs by outcome, what they deleted, the store', async () => {
    const nats = await startNats();
    const storeDir = join(tmp.dir, uid());
    // Two blobs no record names, and no keep duration: a run deletes both.
    const store = new FsBlobStore({ root: storeDir });
    await store.put(undefined, Buffer.from('orphan one\n'));
    await store.put(undefined, Buffer.from('orphan two, longer\n'));
    const lines: Record<string, unknown>[] = [];
    const proc = spawnManaged(
      process.execPath,
      [cacheStore, '--store-dir', storeDir, '--keep-duration', '0s', '--interval', '1s'],
      {
        name: 'cache-store-metrics',
        env: {
          ...process.env,
          KILN_NATS_URL: nats.url,
          KILN_HEALTH_LISTEN: '127.0.0.1:0',
          KILN_METRICS_LISTEN: '127.0.0.1:0',
        },
        onLine: (line, stream) => {
          if (stream === 'stdout' && line.startsWith('{'))
            lines.push(JSON.parse(line) as Record<string, unknown>);
        },
      },
    );
    const nc = await connectNats(nats.url);
    try {
      // The same address for both flags: one listener serves /readyz and /metrics.
      const line = await waitFor('the health listener', () => {
        if (proc.hasExited()) throw new Error(`cache store exited:\n${proc.output()}`);
        return lines.find((l) => l.msg === 'health listening');
      });
      expect(lines.find((l) => l.msg === 'metrics listening')).toBeUndefined();
      const base = `http://127.0.0.1:${String(line.port)}`;
      const metric = async (series: string): Promise<number | undefined> => {
        const text = await (await fetch(`${base}/metrics`)).text();
        const l = text.split('\n').find((x) => x.startsWith(`${series} `));
        return l === undefined ? undefined : Number(l.slice(series.length + 1));
      };
      // No scheduler has made the index's buckets yet: the runs fail, and say so.
      await waitFor('a failed run', async () =>
        ((await metric('kiln_store_gc_runs_total{outcome="failure"}')) ?? 0) >= 1
          ? true
          : undefined,
      );
      expect(await metric('kiln_store_gc_deleted_blobs_total')).toBe(0);
      await openBus(nc);
      await waitFor('a run that deleted the two blobs', async () =>
        (await metric('kiln_store_gc_deleted_blobs_total')) === 2 ? true : undefined,
      );
      expect(await metric('kiln_store_gc_deleted_bytes_total')).toBe(11 + 19);
      expect(await metric('kiln_store_gc_runs_total{outcome="success"}')).toBeGreaterThanOrEqual(1);
      expect(await metric('kiln_store_live_blobs')).toBe(0);
      expect(await metric('kiln_store_gc_last_success_timestamp_seconds')).toBeGreaterThan(0);
      expect((await fetch(`${base}/readyz`)).status).toBe(200);
      const left: string[] = [];
      for await (const b of store.list()) left.push(b.digest);
      expect(left).toEqual([]);
    } finally {
      await nc.close();
      await proc.stop(5_000);
      await nats.stop();
    }
  });
});
