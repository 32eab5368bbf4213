// The cache mounts bucket against a real nats-server run with the farm's role permissions: what a
// worker user may do with it, compare-and-set versions, and leased locks (a dead holder's lease
// runs out; a live one's does not). Waits are on conditions.
import type { KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { startNats, waitFor } from '@kiln/testing';
import type { NatsServerHandle } from '@kiln/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openBus } from './bus.js';
import {
  CacheMountLocks,
  cacheMountLockKey,
  cacheMountName,
  casCacheMountVersion,
  openCacheMountsBucket,
  readCacheMountVersion,
} from './cache-mounts.js';
import { connectNats } from './nats-connect.js';
import { workerInboxPrefix } from './nats-permissions.js';

let nats: NatsServerHandle;
let scheduler: NatsConnection;
const conns: NatsConnection[] = [];

async function asWorker(id: string): Promise<{ nc: NatsConnection; kv: KV }> {
  const nc = await connectNats(nats.url, {
    ...nats.auth?.workers[id],
    inboxPrefix: workerInboxPrefix(id),
  });
  conns.push(nc);
  return { nc, kv: await openCacheMountsBucket(nc) };
}

beforeAll(async () => {
  nats = await startNats({ auth: { workers: ['w1', 'w2'] } });
  scheduler = await connectNats(nats.url, nats.auth?.scheduler);
  await openBus(scheduler);
});

afterAll(async () => {
  for (const c of conns) if (!c.isClosed()) await c.close();
  await scheduler?.close();
  await nats?.stop();
});

describe('cache mounts bucket', () => {
  it('lets workers advance a version by compare-and-set, none lost under contention', async () => {
    const [w1, w2] = [await asWorker('w1'), await asWorker('w2')];
    const name = cacheMountName('tenant', `cas-${Math.random()}`);
    const bump = (kv: KV, worker: string) =>
      casCacheMountVersion(kv, name, 0, (cur) => ({
        version: (cur?.version ?? 0) + 1,
        digest: '',
        size: 0,
        worker,
      }));
    await Promise.all(
      Array.from({ length: 10 }, (_, i) => (i % 2 ? bump(w1.kv, 'w1') : bump(w2.kv, 'w2'))),
    );
    expect((await readCacheMountVersion(w1.kv, name, 0)).value?.version).toBe(10);
    // Other tenants' names are other keys.
    expect(cacheMountName('other', 'x')).not.toBe(cacheMountName('tenant', 'x'));
    expect(cacheMountName('', 'a\0b')).not.toBe(cacheMountName('a', 'b'));
  });

  it('a lock is exclusive while its holder renews it, and free once released', async () => {
    const [w1, w2] = [await asWorker('w1'), await asWorker('w2')];
    const name = cacheMountName('tenant', `lock-${Math.random()}`);
    const l1 = new CacheMountLocks(w1.kv, 'w1', { leaseMs: 300, pollMs: 20 });
    const l2 = new CacheMountLocks(w2.kv, 'w2', { leaseMs: 300, pollMs: 20 });
    const held = await l1.acquire(name, 0, 'locked');
    let got = false;
    const waiting = l2.acquire(name, 0, 'locked').then((h) => {
      got = true;
      return h;
    });
    // Several leases' worth of renewals go by without w2 getting it.
    const key = cacheMountLockKey(name, 0);
    const first = (await w2.kv.get(key))?.revision ?? 0;
    await waitFor(
      'w1 to renew its lock several times',
      async () => ((await w2.kv.get(key))?.revision ?? 0) >= first + 6,
      { timeoutMs: 10_000 },
    );
    expect(got).toBe(false);
    expect(await l2.tryAcquire(name, 0, 'private')).toBeUndefined();
    await held.release();
    const h2 = await waiting;
    expect((await w1.kv.get(key))?.json<{ worker: string }>().worker).toBe('w2');
    await h2.release();
    expect((await w1.kv.get(key))?.operation).toBe('DEL');
  });

  it("a dead holder's lock is taken over once its lease ran out", async () => {
    const [w1, w2] = [await asWorker('w1'), await asWorker('w2')];
    const name = cacheMountName('tenant', `dead-${Math.random()}`);
    const l1 = new CacheMountLocks(w1.kv, 'w1', { leaseMs: 300, pollMs: 20 });
    const l2 = new CacheMountLocks(w2.kv, 'w2', { leaseMs: 300, pollMs: 20 });
    await l1.acquire(name, 0, 'locked');
    // w1 dies: no more renewals, no release.
    await w1.nc.close();
    const h2 = await l2.acquire(name, 0, 'locked', AbortSignal.timeout(20_000));
    expect((await w2.kv.get(cacheMountLockKey(name, 0)))?.json<{ worker: string }>().worker).toBe(
      'w2',
    );
    await h2.release();
  });
});
