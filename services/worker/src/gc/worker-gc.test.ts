/**
 * Garbage collection of a worker's local cache, on a real TaskRunner (real overlay snapshots, the
 * fixture image from the harness's registry, real crun): LRU order under keepBytes, du before and
 * after a prune, leases and the grace period, and a prune racing a running exec.
 */
import { randomBytes, randomUUID, createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeTask, encodeTask } from '@kiln/bus';
import type { GcUsageRecord } from '@kiln/bus';
import { LinuxAmd64, image, marshal, mkfile, parseDefinition, scratch } from '@kiln/llb';
import type { State } from '@kiln/llb';
import { FsBlobStore } from '@kiln/store';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TaskRunner } from '../node/task-runner.js';
import { runGraph } from '../test-support/graphs.js';
import { WorkerGc } from './worker-gc.js';
import type { GcConfig } from './policy.js';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE;
let state: string;
let runner: TaskRunner;

const config = (o: Partial<GcConfig> = {}): GcConfig => ({
  enabled: true,
  keepBytes: 1e12,
  keepDurationMs: 0,
  reservedBytes: 0,
  minFreeBytes: 0,
  graceMs: 0,
  intervalMs: 60_000,
  ...o,
});

const gcOf = (c: GcConfig, now?: () => number): WorkerGc =>
  new WorkerGc({
    snapshotter: runner.engine.snapshotter,
    held: runner.held,
    layers: runner.engine.layers,
    usage: runner.usage,
    cacheMounts: runner.localCacheMounts,
    config: c,
    runningSince: () => runner.runningSince(),
    ...(now ? { now } : {}),
  });

beforeAll(async () => {
  if (!fixture)
    throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through the vitest global setup');
  state = await mkdtemp(join(tmpdir(), 'kiln-gc-'));
  runner = await TaskRunner.open({
    stateDir: state,
    store: new FsBlobStore({ root: join(state, 'store') }),
  });
});
afterAll(async () => {
  await rm(state, { recursive: true, force: true });
});

/** Runs `st`; returns its result id and snapshot. */
async function build(st: State): Promise<{ id: string; snapshot: string }> {
  const snapshot = await runGraph(runner, marshal(st, { platform: LinuxAmd64 }).toBytes());
  const id = runner.held.ids().find((i) => runner.held.get(i) === snapshot);
  if (!snapshot || !id) throw new Error('no held result');
  return { id, snapshot };
}

/** A result of `kb` KiB of fresh random bytes on scratch. */
const blob = (kb: number): State =>
  scratch().file(mkfile(`/f-${randomUUID()}`, 0o644, randomBytes(kb * 1024).toString('base64')));

const sizeOf = (recs: GcUsageRecord[], id: string): number =>
  recs.find((r) => r.id === id)?.size ?? Number.NaN;
const total = (recs: GcUsageRecord[]): number => recs.reduce((n, r) => n + r.size, 0);

describe('worker gc', () => {
  it('prunes least recently used first, down to keepBytes; du after is du before less what it reports', async () => {
    // Its clock a minute ahead: the uses below (10 s ahead) are in its past.
    const gc = gcOf(config(), () => Date.now() + 60_000);
    const a = await build(blob(300));
    const b = await build(blob(300));
    const c = await build(blob(300));
    // Their uses, oldest first: b, c, a (a is read again by a later task).
    const t = Date.now() + 10_000;
    runner.usage.touch(b.snapshot, t);
    runner.usage.touch(c.snapshot, t + 1_000);
    runner.usage.touch(a.snapshot, t + 2_000);
    const before = await gc.diskUsage();
    const held = before.find((r) => r.id === a.snapshot)!;
    expect(held.description).toBe(`result ${a.id}`);
    expect(held.size).toBeGreaterThan(300 * 1024);
    expect(held.inUse).toBe(false);
    expect(held.usageCount).toBeGreaterThan(0);
    // Room for everything but b: b alone goes.
    const removed = await gc.prune({ keepBytes: total(before) - sizeOf(before, b.snapshot) });
    expect(removed.map((r) => r.id)).toEqual([b.snapshot]);
    expect(runner.snapshotOf(b.id)).toBeUndefined();
    expect(runner.engine.layers.get(b.snapshot)).toBeUndefined();
    const after = await gc.diskUsage();
    expect(total(after)).toBe(total(before) - total(removed));
    expect(after.map((r) => r.id)).not.toContain(b.snapshot);
    // Then c, then a.
    const next = await gc.prune({ keepBytes: total(after) - 1 });
    expect(next.map((r) => r.id)).toEqual([c.snapshot]);
    expect(runner.snapshotOf(a.id)).toBe(a.snapshot);
    // Filters select what may go.
    const byId = await gc.prune({ filter: [`id==${a.snapshot}`] });
    expect(byId.map((r) => r.id)).toEqual([a.snapshot]);
    await expect(gc.diskUsage(['nosuchfield==1'])).rejects.toMatchObject({
      code: 'GC_FILTER_INVALID',
    });
  });

  it('never removes a leased snapshot, a parent before its children, or anything within the grace period', async () => {
    const base = await build(blob(100));
    const child = await build(blob(100).file(mkfile('/child', 0o644, 'c')));
    const graceful = gcOf(config({ graceMs: 3_600_000 }));
    expect(await graceful.prune()).toEqual([]);
    const gc = gcOf(config());
    const lease = runner.engine.snapshotter.acquire(child.snapshot);
    let removed: GcUsageRecord[];
    try {
      removed = await gc.prune();
      expect(removed.map((r) => r.id)).toContain(base.snapshot);
      expect(removed.map((r) => r.id)).not.toContain(child.snapshot);
      // Its parent chain stays with it.
      const chain = await runner.engine.snapshotter.parentChain(child.snapshot);
      for (const p of chain) expect(removed.map((r) => r.id)).not.toContain(p);
      expect((await gc.diskUsage()).find((r) => r.id === child.snapshot)?.inUse).toBe(true);
    } finally {
      lease.release();
    }
    removed = await gc.prune();
    expect(removed.map((r) => r.id)).toContain(child.snapshot);
    expect(await runner.engine.snapshotter.list()).toEqual([]);
    expect(runner.heldResults()).toEqual([]);
  });

  it('prune --all ignores the grace period, never a lease', async () => {
    const leased = await build(blob(30));
    const young = await build(blob(30));
    const graceful = gcOf(config({ graceMs: 3_600_000 }));
    expect(await graceful.prune()).toEqual([]);
    const lease = runner.engine.snapshotter.acquire(leased.snapshot);
    try {
      const removed = (await graceful.prune({ all: true })).map((r) => r.id);
      expect(removed).toContain(young.snapshot);
      expect(removed).not.toContain(leased.snapshot);
    } finally {
      lease.release();
    }
    expect((await gcOf(config()).prune()).map((r) => r.id)).toContain(leased.snapshot);
  });

  it('a prune racing a running exec removes nothing the exec reads, and the result is made again when needed', async () => {
    const gc = gcOf(config());
    const tag = randomUUID();
    const baseSt = image(fixture!).file(mkfile('/in.txt', 0o644, tag));
    const base = await build(baseSt);
    const other = await build(blob(50));
    // The exec task alone, its input the held base (as the scheduler dispatches it).
    const def = parseDefinition(
      marshal(baseSt.run({ shlex: 'sh -c "sleep 1; cat /in.txt > /out.txt"' }).root(), {
        platform: LinuxAmd64,
      }).toBytes(),
    );
    const v = def.ops.get(def.result.digest)!;
    const task = decodeTask(
      encodeTask({
        taskId: randomUUID(),
        buildId: 'gc-race',
        vertexDigest: def.result.digest,
        op: v.bytes,
        inputs: [{ resultId: base.id, layers: [] }],
        cacheKey: `sha256:${createHash('sha256').update(tag).digest('hex')}`,
        platform: { OS: 'linux', Architecture: 'amd64', Variant: '' },
      }),
    );
    let running = true;
    const run = runner.run(task, new AbortController().signal, () => {});
    void run.finally(() => (running = false));
    const removedWhileRunning: string[] = [];
    let rounds = 0;
    while (running) {
      const removed = await gc.prune();
      rounds++;
      if (running) removedWhileRunning.push(...removed.map((r) => r.id));
      // Let the exec's I/O in: a prune with nothing to measure settles in microtasks alone.
      await new Promise((r) => setImmediate(r));
    }
    const outcome = await run;
    expect(outcome.error).toBeUndefined();
    expect(rounds).toBeGreaterThan(1);
    // GC did work meanwhile (the unrelated result went), but not on the exec's input.
    expect(removedWhileRunning).toContain(other.snapshot);
    expect(removedWhileRunning).not.toContain(base.snapshot);
    // The exec read its input (`cat` fails on a missing file) and made its output.
    expect(outcome.outputs?.[0]?.resultId).toMatch(/^sha256:/);
    // Everything goes once idle; building again makes the result again.
    await gc.prune();
    expect(runner.snapshotOf(base.id)).toBeUndefined();
    const again = await build(baseSt);
    await runner.engine.read(again.snapshot, async (dir) => {
      expect(await readFile(join(dir, 'in.txt'), 'utf8')).toBe(tag);
    });
  });

  it('lists exec cache mounts in du and collects them, never one a run uses', async () => {
    const mount = (id: string) =>
      runner.localCacheMounts.mount({ namespace: '', id, sharing: 'shared', readonly: false });
    const busy = await mount(`busy-${randomUUID()}`);
    const idle = await mount(`idle-${randomUUID()}`);
    await writeFile(join(busy.path, 'data'), randomBytes(64 * 1024));
    await writeFile(join(idle.path, 'data'), randomBytes(96 * 1024));
    idle.release();
    const gc = gcOf(config());
    const mounts = (await gc.diskUsage(['type==exec.cachemount'])).sort((a, b) => a.size - b.size);
    expect(mounts).toHaveLength(2);
    const [b, i] = mounts as [GcUsageRecord, GcUsageRecord];
    expect(b).toMatchObject({ inUse: true, usageCount: 1, recordType: 'exec.cachemount' });
    expect(i).toMatchObject({ inUse: false, usageCount: 1 });
    expect(b.size).toBeGreaterThanOrEqual(64 * 1024);
    expect(i.size).toBeGreaterThanOrEqual(96 * 1024);
    expect(i.description).toMatch(/^cache mount [0-9a-f]{32}\/0$/);
    // The whole du counts them too.
    expect((await gc.diskUsage()).map((r) => r.id)).toEqual(expect.arrayContaining([b.id, i.id]));

    const removed = await gc.prune({ all: true, filter: ['type==exec.cachemount'] });
    expect(removed.map((r) => r.id)).toEqual([i.id]);
    expect(removed[0]!.size).toBe(i.size);
    expect(await stat(join(busy.path, 'data'))).toBeDefined();
    await expect(
      stat(join(busy.path, '..', '..', i.id.slice('cachemount:'.length))),
    ).rejects.toThrow(/ENOENT/);
    expect((await gc.diskUsage(['type==exec.cachemount'])).map((r) => r.id)).toEqual([b.id]);

    // Once released it goes too; the next use of the id starts from an empty directory.
    busy.release();
    const id = b.id;
    expect(
      (await gc.prune({ all: true, filter: ['type==exec.cachemount'] })).map((r) => r.id),
    ).toEqual([id]);
    expect(await gc.diskUsage(['type==exec.cachemount'])).toEqual([]);
  });
});
