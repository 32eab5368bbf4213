/**
 * LayerCache against a real snapshotter: the tar hashed for a diffID is kept and compressed into
 * the blob, which has the bytes a layer made again from the snapshot has; a kept tar that is not
 * the diffID's bytes is never used.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LinuxAmd64, marshal, mkdir, scratch } from '@kiln/llb';
import { FsBlobStore } from '@kiln/store';
import type { Digest } from '@kiln/store';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { TaskRunner } from '../node/task-runner.js';
import { runGraph } from '../test-support/graphs.js';
import type { SnapshotEnv } from '../ops/snapshots.js';
import { KEEP_TAR_BYTES, KEEP_TOTAL_BYTES, LayerCache } from './layers.js';

const KEEP = { tar: KEEP_TAR_BYTES, total: KEEP_TOTAL_BYTES };

let state: string;
let runner: TaskRunner;
let env: SnapshotEnv;
let store: FsBlobStore;

/** A fresh result of many small files (a salt of its own: a snapshot never seen before). */
async function result(files: number): Promise<string> {
  // One FileOp (one layer): mkdir, then the files, chained.
  let action = mkdir('/d', 0o755);
  for (let i = 0; i < files; i++) action = action.mkfile(`/d/f${i}`, 0o644, `file ${i}\n`);
  const st = scratch().file(action);
  const snapshot = await runGraph(runner, marshal(st, { platform: LinuxAmd64 }).toBytes());
  if (snapshot === undefined) throw new Error('no snapshot');
  return snapshot;
}

const tarsIn = async (cacheFile: string): Promise<string[]> =>
  readdir(join(cacheFile, '..', 'layer-tars')).catch(() => []);

beforeAll(async () => {
  state = await mkdtemp(join(tmpdir(), 'kiln-layers-'));
  store = new FsBlobStore({ root: join(state, 'store') });
  runner = await TaskRunner.open({ stateDir: join(state, 'worker'), store });
  env = { snapshotter: runner.engine.snapshotter, tmpDir: join(state, 'tmp') };
}, 120_000);
afterAll(async () => {
  await rm(state, { recursive: true, force: true });
});

describe('LayerCache', () => {
  it('compresses the tar its diffID was hashed from: the blob a new diff makes', async () => {
    const snap = await result(40);
    // A small tar is kept in memory: no file.
    const inMemory = await LayerCache.open(join(state, 'a0', 'layers.jsonl'));
    const hashed = await inMemory.diffIdOf(env, snap);
    expect(inMemory.keptInMemoryTars()).toBe(1);
    expect(await tarsIn(join(state, 'a0', 'layers.jsonl'))).toHaveLength(0);
    const fromMemory = await inMemory.layerOf(env, store, snap);
    expect(fromMemory.diffID).toBe(hashed);
    expect(inMemory.keptTars()).toBe(0);
    // Without room in memory, in a file.
    const file = join(state, 'a', 'layers.jsonl');
    const layers = await LayerCache.open(file, { ...KEEP, memory: 0 });
    const diffID = await layers.diffIdOf(env, snap);
    expect(layers.keptTars()).toBe(1);
    expect(layers.keptInMemoryTars()).toBe(0);
    expect(await tarsIn(file)).toHaveLength(1);
    const rec = await layers.layerOf(env, store, snap);
    expect(rec).toEqual(fromMemory);
    expect(rec.diffID).toBe(diffID);
    expect(await store.has(rec.digest as Digest)).toBe(true);
    // Used once, then gone.
    expect(layers.keptTars()).toBe(0);
    expect(await tarsIn(file)).toHaveLength(0);
    // Nothing kept: the layer is diffed again, to the same bytes.
    const again = await LayerCache.open(join(state, 'b', 'layers.jsonl'), { tar: 0, total: 0 });
    expect(await again.diffIdOf(env, snap)).toBe(diffID);
    expect(again.keptTars()).toBe(0);
    expect(await again.layerOf(env, store, snap)).toEqual(rec);
  });

  it('never uses a kept tar of other bytes, and keeps no tar past its bounds', async () => {
    const snap = await result(10);
    const file = join(state, 'c', 'layers.jsonl');
    const layers = await LayerCache.open(file, { ...KEEP, memory: 0 });
    const diffID = await layers.diffIdOf(env, snap);
    const [kept] = await tarsIn(file);
    // Another tar of the same length would do as well: this one is not even a tar.
    await writeFile(join(file, '..', 'layer-tars', kept!), 'not the layer');
    const rec = await layers.layerOf(env, store, snap);
    expect(rec.diffID).toBe(diffID);
    const fresh = await LayerCache.open(join(state, 'd', 'layers.jsonl'), { tar: 0, total: 0 });
    await fresh.diffIdOf(env, snap);
    expect(await fresh.layerOf(env, store, snap)).toEqual(rec);

    // A tar above the bound is not kept; the total bound drops the oldest.
    const small = await LayerCache.open(join(state, 'e', 'layers.jsonl'), {
      tar: 4096,
      total: 1 << 20,
    });
    expect(await small.diffIdOf(env, await result(30))).toMatch(/^sha256:/);
    expect(small.keptTars()).toBe(0);
    const two = await LayerCache.open(join(state, 'f', 'layers.jsonl'), {
      tar: 1 << 20,
      total: 8 * 1024,
      memory: 0,
    });
    await two.diffIdOf(env, await result(3));
    await two.diffIdOf(env, await result(4));
    expect(two.keptTars()).toBe(1);
    expect(await tarsIn(join(state, 'f', 'layers.jsonl'))).toHaveLength(1);
  });

  it('removes what a previous process kept when it opens', async () => {
    const file = join(state, 'g', 'layers.jsonl');
    const first = await LayerCache.open(file, { ...KEEP, memory: 0 });
    await first.diffIdOf(env, await result(2));
    expect(await tarsIn(file)).toHaveLength(1);
    await LayerCache.open(file);
    expect(await tarsIn(file)).toHaveLength(0);
  });

  it('holds no more in memory than its bound', async () => {
    const layers = await LayerCache.open(join(state, 'i', 'layers.jsonl'), {
      ...KEEP,
      memory: 12 * 1024,
    });
    // 8 files: 8 headers and 8 blocks of 512 bytes, the directory's header, the end: ~10 KiB.
    const [a, b] = [await result(8), await result(8)];
    await Promise.all([layers.diffIdOf(env, a), layers.diffIdOf(env, b)]);
    expect(layers.keptInMemoryTars()).toBe(1);
    expect(layers.keptTars()).toBe(1);
    // Made from the snapshot again: the same bytes.
    const again = await LayerCache.open(join(state, 'j', 'layers.jsonl'), { tar: 0, total: 0 });
    for (const snap of [a, b])
      expect(await layers.layerOf(env, store, snap)).toEqual(await again.layerOf(env, store, snap));
  });

  it('compresses a small kept tar ahead (the blob a later layerOf returns), not a larger one', async () => {
    const small = await result(3);
    const big = await result(60);
    const file = join(state, 'h', 'layers.jsonl');
    const layers = await LayerCache.open(file, { tar: 1 << 20, total: 4 << 20, ahead: 8 << 10 });
    const diffID = await layers.diffIdOf(env, small);
    await layers.diffIdOf(env, big);
    expect(layers.keptTars()).toBe(2);
    // 60 files of a 512-byte header and a 512-byte block each: past 8 KiB, not made ahead.
    expect(layers.compressAhead(env, store, big)).toBeUndefined();
    const ahead = layers.compressAhead(env, store, small);
    expect(ahead).toBeDefined();
    await ahead;
    const made = layers.get(small);
    expect(made?.diffID).toBe(diffID);
    expect(await store.has(made!.digest as Digest)).toBe(true);
    expect(layers.keptTars()).toBe(1);
    // layerOf finds it made: the same record, no new blob.
    expect(await layers.layerOf(env, store, small)).toEqual(made);
    expect(layers.get(big)).toBeUndefined();
  });
});

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kiln-layer-cache-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const rec = (n: number) => ({
  digest: `sha256:${String(n).padStart(64, 'b')}`,
  diffID: `sha256:${String(n).padStart(64, 'a')}`,
  size: n,
  mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
});
const lines = async (f: string): Promise<string[]> =>
  (await readFile(f, 'utf8')).split('\n').filter(Boolean);

describe('LayerCache persistence', () => {
  it('takes over the whole-map file of earlier versions once, then removes it', async () => {
    const legacy = join(dir, 'layers.json');
    const log = join(dir, 'layers.jsonl');
    await writeFile(legacy, JSON.stringify({ s1: rec(1), s2: { diffID: rec(2).diffID } }));
    const c = await LayerCache.open(log, undefined, legacy);
    expect(c.get('s1')).toEqual(rec(1));
    expect(c.get('s2')).toBeUndefined(); // a diffID without its blob
    expect(existsSync(legacy)).toBe(false);
    const again = await LayerCache.open(log, undefined, legacy);
    expect(again.get('s1')).toEqual(rec(1));
  });

  it('appends one line per change instead of rewriting every entry, and keeps them across opens', async () => {
    const log = join(dir, 'layers.jsonl');
    const c = await LayerCache.open(log);
    for (let i = 0; i < 50; i++) await c.set(`s${i}`, rec(i));
    const before = await lines(log);
    await c.set('s50', rec(50));
    const after = await lines(log);
    expect(after.length).toBe(before.length + 1);
    expect(after.slice(0, before.length)).toEqual(before);
    await c.forget(['s3', 's50']);
    const reopened = await LayerCache.open(log);
    expect(reopened.get('s3')).toBeUndefined();
    expect(reopened.get('s50')).toBeUndefined();
    expect(reopened.get('s49')).toEqual(rec(49));
  });
});
