// FarmCacheMounts in one process against a real nats-server and a real filesystem content store:
// two "workers" (each its own local directories and worker id) share cache mounts through the
// bucket and the store. No RUNs here (the process-level suite is node/farm-cache-mounts.test.ts):
// the mounts are written directly. Waits are on conditions.
import { readFile, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  cacheMountName,
  casCacheMountVersion,
  openBus,
  openCacheMountsBucket,
  readCacheMountVersion,
} from '@kiln/bus';
import { FsBlobStore } from '@kiln/store';
import type { Digest } from '@kiln/store';
import type { KV } from '@nats-io/kv';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';
import { makeTempDir, startNats } from '@kiln/testing';
import type { NatsServerHandle } from '@kiln/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CacheMounts } from './cache-mounts.js';
import { FarmCacheMounts, treeStamp } from './farm-cache-mounts.js';

let nats: NatsServerHandle;
let nc: NatsConnection;
let kv: KV;
let tmp: { dir: string; remove: () => void };
let store: FsBlobStore;

function worker(id: string, o: { pendingWaitMs?: number } = {}): FarmCacheMounts {
  return new FarmCacheMounts({
    bucket: () => openCacheMountsBucket(nc),
    store,
    local: new CacheMounts(join(tmp.dir, id)),
    workerId: id,
    ...o,
  });
}

const req = (id: string) => ({
  namespace: 'tenant',
  id,
  sharing: 'shared' as const,
  readonly: false,
});

beforeAll(async () => {
  tmp = makeTempDir('farm-cache-mounts-unit');
  store = new FsBlobStore({ root: join(tmp.dir, 'store') });
  nats = await startNats();
  nc = await connect({ servers: nats.url });
  await openBus(nc);
  kv = await openCacheMountsBucket(nc);
});

afterAll(async () => {
  await nc?.close();
  await nats?.stop();
  tmp?.remove();
});

describe('FarmCacheMounts', () => {
  it('a reader on another worker waits for an upload announced before it mounts', async () => {
    const [a, b] = [worker('a'), worker('b')];
    const id = `wait-${Math.random()}`;
    const ma = await a.mount(req(id));
    expect(ma.created).toBe(true);
    await writeFile(join(ma.path, 'f'), 'from a');
    // Released as a task ends: the upload is still to come.
    await ma.release();
    const mb = await b.mount(req(id));
    expect(await readFile(join(mb.path, 'f'), 'utf8')).toBe('from a');
    expect(mb.created).toBe(false);
    await mb.release();
    await Promise.all([a.flush(), b.flush()]);
  });

  it('uploads nothing after a use that changed nothing', async () => {
    const a = worker('a2');
    const id = `same-${Math.random()}`;
    const name = cacheMountName('tenant', id);
    const m1 = await a.mount(req(id));
    await writeFile(join(m1.path, 'f'), 'x');
    await m1.release();
    await a.flush();
    const v1 = (await readCacheMountVersion(kv, name, 0)).value;
    expect(v1).toMatchObject({ version: 1, worker: 'a2' });
    // The blob's last use, set in the past: a put of the same content would touch it.
    const blob = store.pathOf(v1!.digest as Digest);
    const then = new Date(Date.now() - 3600_000);
    await utimes(blob, then, then);
    const old = (await stat(blob)).mtimeMs;
    const m2 = await a.mount(req(id));
    const before = await treeStamp(m2.path);
    await m2.release();
    await a.flush();
    expect(await treeStamp(m2.path)).toBe(before);
    expect((await readCacheMountVersion(kv, name, 0)).value).toEqual(v1);
    // Nothing was tarred and put: the blob was not touched.
    expect((await stat(blob)).mtimeMs).toBe(old);
    // A change is a new version.
    const m3 = await a.mount(req(id));
    await writeFile(join(m3.path, 'g'), 'y');
    await m3.release();
    await a.flush();
    expect((await readCacheMountVersion(kv, name, 0)).value?.version).toBe(2);
  });

  it("clears a dead worker's announced upload after waiting for it once", async () => {
    const id = `dead-${Math.random()}`;
    const name = cacheMountName('tenant', id);
    await casCacheMountVersion(kv, name, 0, () => ({
      version: 0,
      digest: '',
      size: 0,
      worker: '',
      pending: { worker: 'gone', token: 't' },
    }));
    const b = worker('b3', { pendingWaitMs: 200 });
    const m = await b.mount({ ...req(id), readonly: true });
    expect(m.created).toBe(true);
    await m.release();
    expect((await readCacheMountVersion(kv, name, 0)).value?.pending).toBeUndefined();
  });
});
