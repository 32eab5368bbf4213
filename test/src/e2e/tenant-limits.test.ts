/**
 * Per-tenant RUN limits: the scheduler's `--tenant-limits` go into each task of the tenant's
 * builds, and the worker applies them capped by its own. A real ControlServer with tokens for two
 * tenants and a Dispatcher on nats-server, a real WorkerNode (crun, cgroups, overlay), the CLI
 * with each tenant's token. The worker allows 96 MiB; tenant `small` gets 32 MiB, tenant `big`
 * asks 1 GiB and gets the worker's 96 MiB.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  Authenticator,
  ControlServer,
  Dispatcher,
  parseTenantLimits,
  parseTokens,
} from '@kiln/scheduler';
import { FsBlobStore } from '@kiln/store';
import { WorkerNode, loadConfig } from '@kiln/worker';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, startNats, waitFor } from '../harness/index.js';
import type { NatsServerHandle } from '../harness/index.js';
import { runKiln } from './run-kiln.js';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE ?? '';
const SMALL = `small-${randomUUID()}`;
const BIG = `big-${randomUUID()}`;

let tmp: { dir: string; remove: () => void };
let nats: NatsServerHandle;
let nc: NatsConnection;
let dispatcher: Dispatcher;
let server: ControlServer;
let worker: WorkerNode;
let addr: string;

beforeAll(async () => {
  if (!fixture)
    throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through the vitest global setup');
  tmp = makeTempDir('tenant-limits');
  nats = await startNats();
  nc = await connect({ servers: nats.url });
  dispatcher = await Dispatcher.start({ nc });
  const storeDir = join(tmp.dir, 'store');
  server = new ControlServer({
    dispatcher,
    store: new FsBlobStore({ root: storeDir }),
    auth: new Authenticator({ tokens: parseTokens(`small:${SMALL},big:${BIG}`, 'test') }),
    tenantLimits: parseTenantLimits(['small:memory=32MiB,pids=64', 'big:memory=1GiB']),
  });
  addr = `127.0.0.1:${await server.listen('127.0.0.1:0')}`;
  worker = await WorkerNode.start(
    loadConfig({
      argv: [
        ...['--id', `limits-${process.pid}`, '--state-dir', join(tmp.dir, 'worker')],
        ...['--log-level', 'silent', '--memory-limit', '96MiB'],
      ],
      env: {
        KILN_NATS_URL: nats.url,
        KILN_STORE_DIR: storeDir,
        KILN_WORKER_HEARTBEAT_MS: '250',
        KILN_WORKER_DRAIN_TIMEOUT_MS: '2000',
      },
    }),
  );
  await waitFor('the dispatcher to see the worker', () =>
    dispatcher.liveWorkers().some((w) => w.id === worker.id),
  );
});

afterAll(async () => {
  await worker?.drain();
  await server?.close();
  await dispatcher?.close();
  await nc?.close();
  await nats?.stop();
  tmp?.remove();
});

/** Builds a Dockerfile whose RUN needs `mib` MiB of memory, as the tenant of `token`. */
async function hog(token: string, mib: number): Promise<{ code: number; out: string }> {
  const ctx = join(tmp.dir, `ctx-${randomUUID()}`);
  await mkdir(ctx, { recursive: true });
  await writeFile(
    join(ctx, 'Dockerfile'),
    `ARG BASE\nFROM \${BASE}\nRUN busybox dd if=/dev/zero of=/dev/null bs=${mib}M count=1\n`,
  );
  return runKiln([
    ...['build', ctx, '--progress', 'plain', '--no-cache', '--addr', addr, '--token', token],
    ...['--build-arg', `BASE=${fixture}`],
  ]);
}

describe('per-tenant limits', () => {
  it("a tenant's limit below the worker's applies to its RUNs", async () => {
    const r = await hog(SMALL, 64);
    expect(r.code).toBe(1);
    expect(r.out).toContain('was killed at its memory limit (32 MiB)');
  }, 180_000);

  it("a tenant's limit above the worker's is capped by the worker's", async () => {
    const ok = await hog(BIG, 64);
    expect(ok.code, ok.out).toBe(0);
    const r = await hog(BIG, 160);
    expect(r.code).toBe(1);
    expect(r.out).toContain('was killed at its memory limit (96 MiB)');
  }, 180_000);
});

describe('parseTenantLimits', () => {
  it('reads sizes, counts and durations per tenant; 0 is none', () => {
    const m = parseTenantLimits(['a:memory=2GiB,pids=512;b:time=30m,cpuShares=512', 'c:pids=0']);
    expect(m.get('a')).toEqual({ memoryBytes: 2 * 1024 ** 3, pids: 512, cpuShares: 0, timeMs: 0 });
    expect(m.get('b')).toEqual({ memoryBytes: 0, pids: 0, cpuShares: 512, timeMs: 1_800_000 });
    expect(m.get('c')).toEqual({ memoryBytes: 0, pids: 0, cpuShares: 0, timeMs: 0 });
  });

  it('refuses what it cannot read, typed, naming the tenant', () => {
    for (const [bad, msg] of [
      ['a:memory=lots', /tenant a: memory: /],
      ['a:disk=1GB', /keys are memory, pids, cpuShares, time/],
      ['a:pids=1;a:pids=2', /tenant a is given twice/],
      ['memory=1GB', /expected TENANT:key=value/],
      ['a:cpuShares=1', /CPU shares are 2\.\.262144/],
    ] as const) {
      let err: unknown;
      try {
        parseTenantLimits([bad]);
      } catch (e) {
        err = e;
      }
      expect(err, bad).toMatchObject({ code: 'CONFIG_INVALID' });
      expect((err as Error).message, bad).toMatch(msg);
    }
  });
});
