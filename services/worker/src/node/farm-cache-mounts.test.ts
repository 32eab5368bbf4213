// Cache mounts shared across workers (issue 13 item 5), with real processes: two worker
// processes (main.ts, bundled) on one nats-server run with the farm's role permissions, one
// filesystem content store, crun and overlayfs, tasks placed by the scheduler's real Dispatcher.
// No mocks; waits are on conditions.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { CACHE_MOUNTS_BUCKET, cacheMountName, connectNats } from '@kiln/bus';
import type { TaskProgress } from '@kiln/bus';
import { LinuxAmd64, image, marshal } from '@kiln/llb';
import type { CacheSharing, State } from '@kiln/llb';
import { spawnManaged } from '@kiln/common';
import type { ManagedProcess } from '@kiln/common';
import { Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { makeTempDir, natsAuthEnv, startNats, waitFor } from '@kiln/testing';
import type { NatsServerHandle } from '@kiln/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FsBlobStore } from '@kiln/store';
import { TaskRunner } from './task-runner.js';
import { bundleWorkerMain, startDispatcher, submitGraph } from '../test-support/graphs.js';
import type { DispatcherLike } from '../test-support/graphs.js';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE ?? '';
const A = 'cm-a';
const B = 'cm-b';
const C = 'cm-c';
/** Short enough for a test to see a dead worker's lock go, long enough for a loaded machine. */
const LEASE_MS = '3000';

let tmp: { dir: string; remove: () => void };
let nats: NatsServerHandle;
let nc: NatsConnection;
let d: DispatcherLike;
let storeDir: string;
const procs: ManagedProcess[] = [];

const salt = (): string => Math.random().toString(36).slice(2);

/** A RUN of `script` with a cache mount at /cache. */
function cacheRun(id: string, sharing: CacheSharing, script: string): Uint8Array {
  const st: State = image(fixture)
    .run({
      args: ['/bin/sh', '-c', script],
      mounts: [{ target: '/cache', cache: { id, sharing } }],
    })
    .root();
  return marshal(st, { platform: LinuxAmd64 }).toBytes();
}

/** Runs `def` with every vertex placed on `worker`; returns the RUN's output lines and worker. */
async function runOn(
  worker: string,
  def: Uint8Array,
  cacheNamespace = 'tenant-1',
  onProgress?: (p: TaskProgress) => void,
): Promise<{ lines: string[]; workerId: string }> {
  const progress: TaskProgress[] = [];
  const { result } = await submitGraph(d, def, {
    salt: salt(),
    place: () => worker,
    cacheNamespace,
    onProgress: (p) => {
      progress.push(p);
      onProgress?.(p);
    },
  });
  const lines = progress.flatMap((p) => (p.stage === 'output' ? (p.lines ?? []) : []));
  return { lines, workerId: result.workerId };
}

async function spawnWorker(id: string): Promise<ManagedProcess> {
  const mainJs = await bundleWorkerMain(tmp.dir);
  const proc = spawnManaged(
    process.execPath,
    [
      mainJs,
      ...['--id', id, '--state-dir', join(tmp.dir, id), '--store-dir', storeDir],
      ...['--nats', nats.url, '--slots', '2'],
    ],
    {
      name: `worker ${id}`,
      env: {
        ...process.env,
        ...natsAuthEnv(nats.auth?.workers[id]),
        KILN_WORKER_HEARTBEAT_MS: '250',
        KILN_WORKER_DRAIN_TIMEOUT_MS: '20000',
        KILN_LOG_LEVEL: 'warn',
        KILN_WORKER_CACHE_MOUNT_LEASE_MS: LEASE_MS,
      },
    },
  );
  procs.push(proc);
  await waitFor(
    `${id} to register`,
    () => {
      if (proc.hasExited()) throw new Error(`${id} exited:\n${proc.output()}`);
      return d.liveWorkers().some((w) => w.id === id);
    },
    { timeoutMs: 60_000 },
  );
  return proc;
}

beforeAll(async () => {
  if (!fixture)
    throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through the vitest global setup');
  tmp = makeTempDir('farm-cache-mounts');
  storeDir = join(tmp.dir, 'store');
  await mkdir(storeDir);
  nats = await startNats({ auth: { workers: [A, B, C] } });
  nc = await connectNats(nats.url, nats.auth?.scheduler);
  // The scheduler's side opens the bus first: it makes the buckets (workers may not).
  d = await startDispatcher(nc);
  await spawnWorker(A);
  await spawnWorker(B);
}, 180_000);

afterAll(async () => {
  await Promise.allSettled(procs.map((p) => p.stop()));
  await d?.close();
  await nc?.close();
  await nats?.stop();
  tmp?.remove();
});

describe('cache mounts shared across workers', () => {
  it('a cache mount written by a RUN on worker A is read by a RUN on worker B', async () => {
    const id = `c-${salt()}`;
    const token = salt();
    const wrote = await runOn(A, cacheRun(id, 'shared', `echo ${token} > /cache/f; echo wrote`));
    expect(wrote.workerId).toBe(A);
    expect(wrote.lines).toContain('wrote');
    const read = await runOn(B, cacheRun(id, 'shared', 'cat /cache/f || echo missing'));
    expect(read.workerId).toBe(B);
    expect(read.lines).toContain(token);
    // B adds to it; A, which holds an older version locally, syncs to B's.
    await runOn(B, cacheRun(id, 'shared', 'echo from-b >> /cache/f'));
    const back = await runOn(A, cacheRun(id, 'shared', 'cat /cache/f'));
    expect(back.workerId).toBe(A);
    expect(back.lines).toEqual(expect.arrayContaining([token, 'from-b']));
    // The version is in the bucket, under the tenant's name of the cache, naming a blob.
    const kv = await new Kvm(nc).open(CACHE_MOUNTS_BUCKET);
    const e = await kv.get(`v.${cacheMountName('tenant-1', id)}.0`);
    const v = e?.json<{ version: number; digest: string; worker: string }>();
    expect(v).toMatchObject({ version: 2, worker: B });
    expect(v?.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
  });

  it('`locked` serialises two RUNs on different workers: each sees the other or runs first', async () => {
    const id = `l-${salt()}`;
    // Each RUN reads the log, takes a while, then appends to it. Run at once on A and B: unless
    // the second waits for the first (and then syncs to its version), one line is lost.
    const step = (who: string): Uint8Array =>
      cacheRun(
        id,
        'locked',
        `n=$(cat /cache/log 2>/dev/null | wc -l); sleep 1; echo ${who} >> /cache/log; echo seen=$n`,
      );
    const [onA, onB] = await Promise.all([runOn(A, step('run-a')), runOn(B, step('run-b'))]);
    expect([onA.workerId, onB.workerId]).toEqual([A, B]);
    const seen = [...onA.lines, ...onB.lines].filter((l) => l.startsWith('seen=')).sort();
    expect(seen).toEqual(['seen=0', 'seen=1']);
    const after = await runOn(A, cacheRun(id, 'locked', 'sort /cache/log'));
    expect(after.lines).toEqual(expect.arrayContaining(['run-a', 'run-b']));
  });

  it("one tenant never sees another's cache mount of the same id", async () => {
    const id = `t-${salt()}`;
    const token = salt();
    await runOn(A, cacheRun(id, 'shared', `echo ${token} > /cache/f`), 'tenant-1');
    const other = await runOn(
      B,
      cacheRun(id, 'shared', 'cat /cache/f || echo missing'),
      'tenant-2',
    );
    expect(other.lines).toContain('missing');
    expect(other.lines).not.toContain(token);
    // On the same worker as the writer, too.
    const otherOnA = await runOn(
      A,
      cacheRun(id, 'shared', 'cat /cache/f || echo missing'),
      'tenant-2',
    );
    expect(otherOnA.lines).toContain('missing');
    // The tenant that wrote it reads it on B.
    const same = await runOn(B, cacheRun(id, 'shared', 'cat /cache/f || echo missing'), 'tenant-1');
    expect(same.lines).toContain(token);
  });

  it('`private` RUNs on two workers at once get different instances', async () => {
    const id = `p-${salt()}`;
    const step = (who: string): Uint8Array =>
      cacheRun(
        id,
        'private',
        `echo ${who} >> /cache/log; sleep 1; echo lines=$(wc -l < /cache/log)`,
      );
    const [onA, onB] = await Promise.all([runOn(A, step('pa')), runOn(B, step('pb'))]);
    expect([onA.workerId, onB.workerId]).toEqual([A, B]);
    // Each instance holds one line: neither RUN saw the other's writes.
    expect(onA.lines).toContain('lines=1');
    expect(onB.lines).toContain('lines=1');
    const kv = await new Kvm(nc).open(CACHE_MOUNTS_BUCKET);
    const name = cacheMountName('tenant-1', id);
    await waitFor('both instances uploaded', async () => {
      const [i0, i1] = await Promise.all([kv.get(`v.${name}.0`), kv.get(`v.${name}.1`)]);
      return (
        i0?.json<{ version: number }>().version === 1 &&
        i1?.json<{ version: number }>().version === 1
      );
    });
  });

  it('a worker killed while it holds a `locked` cache mount does not hold it past its lease', async () => {
    const id = `k-${salt()}`;
    const k = await spawnWorker(C);
    try {
      const long = cacheRun(id, 'locked', 'echo started; sleep 3; echo from-c >> /cache/log');
      let started!: () => void;
      const isStarted = new Promise<void>((r) => (started = r));
      const onC = runOn(C, long, 'tenant-1', (p) => {
        if (p.workerId === C && p.lines?.includes('started')) started();
      });
      await Promise.race([
        isStarted,
        onC.then(() => {
          throw new Error(`the RUN finished before ${C} could be killed`);
        }),
      ]);
      // C holds the farm lock of the cache mount now; it dies holding it.
      const kv = await new Kvm(nc).open(CACHE_MOUNTS_BUCKET);
      const lock = await kv.get(`l.${cacheMountName('tenant-1', id)}.0`);
      expect(lock?.json<{ worker: string }>().worker).toBe(C);
      k.kill('SIGKILL');
      await k.exited;
      // A RUN on B takes the lock once C's lease ran out; C's RUN is run again elsewhere.
      const onB = await runOn(B, cacheRun(id, 'locked', 'echo from-b >> /cache/log; echo ok'));
      expect(onB.workerId).toBe(B);
      expect(onB.lines).toContain('ok');
      expect([A, B]).toContain((await onC).workerId);
    } finally {
      await k.stop(5_000);
      // What the dead process left (its container, exec mounts) is swept by the next open.
      await TaskRunner.open({
        stateDir: join(tmp.dir, C),
        store: new FsBlobStore({ root: storeDir }),
      });
    }
  });
});
