// The store collector against a real nats-server (the farm's users: it reads the index as its
// own read-only user) and real content stores; the service as a process (bundled from source).
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { utimes } from 'node:fs/promises';
import { promisify } from 'node:util';
import {
  CACHE_STORE_INBOX_PREFIX,
  TASKS_BUCKET,
  cacheMountName,
  casCacheMountVersion,
  connectNats,
  createRecord,
  encodeResult,
  encodeTask,
  openBus,
  openCacheMountsBucket,
  taskKey,
} from '@kiln/bus';
import type { Bus, TaskRecord } from '@kiln/bus';
import { FsBlobStore, sha256Digest } from '@kiln/store';
import type { BlobInfo, Digest } from '@kiln/store';
import { bundleEntries, makeTempDir, natsAuthEnv, startNats } from '@kiln/testing';
import type { NatsServerHandle } from '@kiln/testing';
import type { NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { liveDigests, recordDigests } from './live-records.js';
import { collectStore } from './store-gc.js';

const DAY = 24 * 3600_000;
let nats: NatsServerHandle;
let nc: NatsConnection;
let bus: Bus;
let tmp: { dir: string; remove: () => void };
let entry: string;

beforeAll(async () => {
  tmp = makeTempDir('cache-store');
  nats = await startNats({ auth: { workers: [] } });
  nc = await connectNats(nats.url, nats.auth?.scheduler);
  bus = await openBus(nc);
  entry = (
    await bundleEntries({ 'kiln-cache-store': 'services/cache-store/src/main.ts' }, tmp.dir)
  )['kiln-cache-store']!;
}, 120_000);

afterAll(async () => {
  await nc?.close();
  await nats?.stop();
  tmp?.remove();
});

beforeEach(async () => {
  for await (const k of await bus.tasks.keys()) await bus.tasks.purge(k);
  const mounts = await openCacheMountsBucket(nc);
  for await (const k of await mounts.keys()) await mounts.purge(k);
});

/** A finished record whose result names `layer` and whose task's op names `source`. */
async function record(layer: Digest, source: Digest): Promise<void> {
  const cacheKey = `sha256:${randomUUID().replace(/-/g, '')}`;
  const op = Buffer.from(`docker-image://example.test/base@${source}`);
  const r: TaskRecord = {
    v: 1,
    taskId: randomUUID(),
    cacheKey,
    platform: 'linux/amd64',
    attempt: 1,
    attemptToken: randomUUID(),
    state: 'done',
    builds: [],
    task: Buffer.from(encodeTask({ taskId: 't', cacheKey, op })).toString('base64'),
    result: Buffer.from(
      encodeResult({
        taskId: 't',
        outputs: [
          {
            resultId: 'r',
            layers: [{ digest: layer, diffId: layer, size: 1, mediaType: 'application/x-test' }],
          },
        ],
      }),
    ).toString('base64'),
    createdAt: 0,
    dispatchedAt: 0,
  };
  await createRecord(bus.tasks, taskKey(cacheKey), r);
}

/** A store holding named blobs; `old` ones were last used two days ago. */
async function storeWith(
  names: string[],
  old: string[],
  store = new FsBlobStore({ root: makeTempDir('gc-store').dir }),
): Promise<{ store: FsBlobStore; d: Record<string, Digest> }> {
  const d: Record<string, Digest> = {};
  for (const n of names) d[n] = (await store.put(undefined, Buffer.from(`blob ${n}`))).digest;
  const then = new Date(Date.now() - 2 * DAY);
  for (const n of old) await utimes(store.pathOf(d[n]!), then, then);
  return { store, d };
}

async function listed(store: FsBlobStore): Promise<string[]> {
  const out: string[] = [];
  for await (const b of store.list()) out.push(b.digest);
  return out.sort();
}

describe('store collector', () => {
  it('finds the digests a record names in its JSON, its result and its task', async () => {
    const [a, b] = [sha256Digest('a'), sha256Digest('b')];
    await record(a, b);
    expect([...(await liveDigests(nc))].sort()).toEqual([a, b].sort());
    expect(recordDigests(new TextEncoder().encode('not json'))).toEqual(new Set());
    // The current version of a cache mount shared across workers is live too.
    const c = sha256Digest('cache mount');
    const name = cacheMountName('tenant', 'npm');
    await casCacheMountVersion(await openCacheMountsBucket(nc), name, 0, () => ({
      version: 1,
      digest: c,
      size: 1,
      worker: 'w',
    }));
    expect([...(await liveDigests(nc))].sort()).toEqual([a, b, c].sort());
  });

  it('deletes what no record names once unused past the keep duration, and nothing else', async () => {
    const { store, d } = await storeWith(
      ['layer', 'base', 'old', 'recent'],
      ['layer', 'base', 'old'],
    );
    await record(d.layer!, d.base!);
    const o = { store, live: () => liveDigests(nc), keepDurationMs: DAY };
    const dry = await collectStore({ ...o, dryRun: true });
    expect(dry).toMatchObject({ blobs: 4, live: 2, recent: 1, deleted: 1, missing: 0 });
    expect(await listed(store)).toHaveLength(4);
    const deleted: string[] = [];
    const r = await collectStore({ ...o, onDelete: (b) => deleted.push(b.digest) });
    expect(r).toMatchObject({ blobs: 4, live: 2, recent: 1, deleted: 1 });
    expect(r.deletedBytes).toBe(Buffer.byteLength('blob old'));
    expect(deleted).toEqual([d.old]);
    expect(await listed(store)).toEqual([d.layer, d.base, d.recent].sort());
  });

  it('spares an old blob that a build reuses while the collector runs', async () => {
    // The listing shows it old; the build's put of the same content touches it before the delete.
    class ReusedDuringList extends FsBlobStore {
      override async *list(): AsyncIterable<BlobInfo> {
        for await (const b of super.list()) yield b;
        await this.put(undefined, Buffer.from('blob old'));
      }
    }
    const { store, d } = await storeWith(
      ['old'],
      ['old'],
      new ReusedDuringList({ root: makeTempDir('gc-store').dir }),
    );
    const r = await collectStore({ store, live: () => liveDigests(nc), keepDurationMs: DAY });
    expect(r).toMatchObject({ deleted: 0, recent: 1 });
    expect(await store.has(d.old!)).toBe(true);
  });

  it('marks from the index as its read-only NATS user, which cannot write a record', async () => {
    const { d } = await storeWith(['layer', 'base'], []);
    await record(d.layer!, d.base!);
    const ro = await connectNats(nats.url, {
      ...nats.auth!.cacheStore,
      inboxPrefix: CACHE_STORE_INBOX_PREFIX,
    });
    try {
      const live = await liveDigests(ro);
      expect(live.has(d.layer!)).toBe(true);
      expect(live.has(d.base!)).toBe(true);
      const { Kvm } = await import('@nats-io/kv');
      const kv = await new Kvm(ro).open(TASKS_BUCKET);
      await expect(kv.put('forged', 'x')).rejects.toThrow(/permission|timeout/i);
      // Not even a message outside its buckets.
      await expect(ro.request('kiln.record.w1', 'x', { timeout: 2000 })).rejects.toThrow();
    } finally {
      await ro.close().catch(() => undefined);
    }
    // The scheduler's view: no forged record was written.
    expect(await bus.tasks.get('forged')).toBeNull();
  });

  it('runs as a service: one collection with --once, logged, under its own NATS user', async () => {
    const { store, d } = await storeWith(['layer', 'base', 'old'], ['layer', 'base', 'old']);
    await record(d.layer!, d.base!);
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [entry, '--once', '--keep-duration', '1d', '--store-dir', store.root],
      { env: { ...process.env, KILN_NATS_URL: nats.url, ...natsAuthEnv(nats.auth?.cacheStore) } },
    );
    const line = stdout
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .find((l) => l.msg === 'store collected');
    expect(line).toMatchObject({ blobs: 3, live: 2, deleted: 1, dryRun: false });
    expect(await listed(store)).toEqual([d.layer, d.base].sort());
  });

  it('refuses to start without a store, in one line', async () => {
    const err = await promisify(execFile)(process.execPath, [entry, '--once'], {
      env: { ...process.env, KILN_NATS_URL: nats.url, KILN_STORE_DIR: '', KILN_S3_ENDPOINT: '' },
    }).catch((e: { code: number; stderr: string }) => e);
    expect(err).toMatchObject({ code: 1 });
    expect((err as { stderr: string }).stderr.trim()).toBe(
      'kiln-cache-store: CONFIG_INVALID: no content store: give --store-dir or KILN_S3_* settings',
    );
  });
});
