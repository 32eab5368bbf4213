import {
  mkdtemp,
  readFile,
  readdir,
  rm,
  unlink,
  writeFile,
  lstat,
  mkdir,
  link,
  stat,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Readable } from 'node:stream';
import { applyLayer, diffLayer } from '@kiln/layers';
import {
  CopySnapshotter,
  OverlaySnapshotter,
  SnapshotError,
  mountAll,
  mountTemp,
  openSnapshotter,
} from './index.js';
import type { Snapshotter } from './index.js';
import { gunzipSync } from 'node:zlib';
import { exec, readAll, snapshotTree, tarNames } from '@kiln/testing';

interface Backend {
  name: string;
  open(root: string): Promise<Snapshotter>;
}

const backends: Backend[] = [
  { name: 'overlayfs', open: (root) => OverlaySnapshotter.open({ root }) },
  { name: 'native', open: (root) => CopySnapshotter.open({ root }) },
];

/** Runs `fn` with the snapshot's tree mounted on the host. */
async function withMounted<T>(
  s: Snapshotter,
  key: string,
  tmp: string,
  fn: (dir: string) => Promise<T>,
): Promise<T> {
  const m = await mountTemp(await s.mounts(key), tmp);
  try {
    return await fn(m.path);
  } finally {
    await m.release();
  }
}

async function names(dir: string): Promise<string[]> {
  return (await readdir(dir)).sort();
}

describe.each(backends)('snapshotter conformance: $name', (backend) => {
  let root: string;
  let tmp: string;
  let s: Snapshotter;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), `kiln-snap-${backend.name}-`));
    tmp = join(root, 'mnt');
    s = await backend.open(join(root, 'state'));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('shows the parent in a child, keeps the child out of the parent, and sees deletions', async () => {
    expect((await s.prepare('base-w')).length).toBe(1);
    await withMounted(s, 'base-w', tmp, async (d) => {
      await writeFile(join(d, 'a'), 'A');
      await mkdir(join(d, 'dir'));
      await writeFile(join(d, 'dir', 'gone'), 'G');
      await writeFile(join(d, 'dir', 'kept'), 'K');
      await link(join(d, 'a'), join(d, 'a-link'));
    });
    await s.commit('base', 'base-w');
    await expect(s.stat('base-w')).rejects.toBeInstanceOf(SnapshotError);
    expect((await s.stat('base')).kind).toBe('committed');

    await s.prepare('child-w', 'base');
    await withMounted(s, 'child-w', tmp, async (d) => {
      expect(await readFile(join(d, 'a'), 'utf8')).toBe('A');
      expect((await stat(join(d, 'a-link'))).ino).toBe((await stat(join(d, 'a'))).ino);
      await unlink(join(d, 'dir', 'gone'));
      await writeFile(join(d, 'b'), 'B');
      expect(await names(join(d, 'dir'))).toEqual(['kept']);
    });
    await s.commit('child', 'child-w');

    await s.view('base-v', 'base');
    await withMounted(s, 'base-v', tmp, async (d) => {
      expect(await names(d)).toEqual(['a', 'a-link', 'dir']);
      expect(await names(join(d, 'dir'))).toEqual(['gone', 'kept']);
      await expect(writeFile(join(d, 'x'), 'x')).rejects.toMatchObject({ code: 'EROFS' });
    });
    await s.view('child-v', 'child');
    await withMounted(s, 'child-v', tmp, async (d) => {
      expect(await names(d)).toEqual(['a', 'a-link', 'b', 'dir']);
      expect(await names(join(d, 'dir'))).toEqual(['kept']);
    });

    const upper = await s.upperDir('child');
    if (backend.name === 'overlayfs') {
      // the delete is a whiteout (char device 0/0) in the child's upper dir
      const wh = await lstat(join(upper!, 'dir', 'gone'));
      expect(wh.isCharacterDevice()).toBe(true);
      expect(wh.rdev).toBe(0);
    } else {
      expect(upper).toBeUndefined();
    }
    expect(await s.parentChain('child')).toEqual(['base']);
    await s.remove('base-v');
    await s.remove('child-v');
  });

  it('diffs a committed snapshot into a layer with a whiteout for the delete', async () => {
    const mountsUnder = async (): Promise<string[]> =>
      (await readFile('/proc/self/mounts', 'utf8'))
        .split('\n')
        .map((l) => l.split(' ')[1] ?? '')
        .filter((m) => m.startsWith(`${root}/`));
    const before = await mountsUnder();
    const h = await s.diffSource('child');
    // overlay diffs read the upper dir and the parent's lowerdirs, unmounted; copies compare trees
    expect(h.source.kind).toBe(backend.name === 'overlayfs' ? 'overlay' : 'compare');
    if (h.source.kind === 'overlay') {
      expect(h.source.lowerLayers).toHaveLength(1);
      expect(await mountsUnder()).toEqual(before);
    }
    try {
      const layer = diffLayer(h.source, { compression: 'gzip' });
      const data = await readAll(layer.stream);
      await layer.done;
      expect(await tarNames(gunzipSync(data))).toEqual(['b', 'dir/', 'dir/.wh.gone']);
    } finally {
      await h.release();
    }
  });

  it('diffs a replaced directory so that the layer applies back to the same tree', async () => {
    await s.prepare('opq-w', 'child');
    await withMounted(s, 'opq-w', tmp, async (d) => {
      await rm(join(d, 'dir'), { recursive: true });
      await mkdir(join(d, 'dir'));
      await writeFile(join(d, 'dir', 'new'), 'N');
      await mkdir(join(d, 'sub'));
    });
    await s.commit('opq', 'opq-w');
    const h = await s.diffSource('opq');
    let data: Buffer;
    try {
      const layer = diffLayer(h.source, { compression: 'gzip' });
      data = await readAll(layer.stream);
      await layer.done;
    } finally {
      await h.release();
    }
    const target = join(root, `apply-${backend.name}`);
    await mkdir(target);
    await withMounted(s, 'child', tmp, (d) => exec('cp', ['-a', `${d}/.`, `${target}/`]));
    await applyLayer(Readable.from([data]), target);
    await withMounted(s, 'opq', tmp, async (d) => {
      expect(await snapshotTree(target)).toEqual(await snapshotTree(d));
      expect(await names(join(d, 'dir'))).toEqual(['new']);
    });
    await s.remove('opq');
  });

  it('builds a grandchild on a committed child', async () => {
    await s.prepare('gc-w', 'child');
    await withMounted(s, 'gc-w', tmp, async (d) => {
      expect(await names(d)).toEqual(['a', 'a-link', 'b', 'dir']);
      await writeFile(join(d, 'c'), 'C');
    });
    await s.commit('gc', 'gc-w');
    expect(await s.parentChain('gc')).toEqual(['child', 'base']);
    await withMounted(s, 'gc', tmp, async (d) => {
      expect(await names(d)).toEqual(['a', 'a-link', 'b', 'c', 'dir']);
      expect(await readFile(join(d, 'b'), 'utf8')).toBe('B');
    });
    const u = await s.usage('gc');
    expect(u.inodes).toBeGreaterThanOrEqual(2);
  });

  it('refuses to remove what is leased or has children', async () => {
    const lease = s.acquire('gc');
    expect(s.refCount('gc')).toBe(1);
    await expect(s.remove('gc')).rejects.toMatchObject({ code: 'SNAPSHOT_IN_USE' });
    await expect(s.remove('child')).rejects.toMatchObject({ code: 'SNAPSHOT_IN_USE' });
    lease.release();
    lease.release(); // idempotent
    expect(s.refCount('gc')).toBe(0);
    await s.prepare('tmp-w', 'gc');
    const l2 = s.acquire('tmp-w');
    await expect(s.commit('tmp', 'tmp-w')).rejects.toMatchObject({ code: 'SNAPSHOT_IN_USE' });
    l2.release();
    await s.remove('tmp-w');
    await expect(s.prepare('x', 'missing')).rejects.toMatchObject({ code: 'SNAPSHOT_NOT_FOUND' });
    await expect(s.prepare('gc', 'child')).rejects.toMatchObject({ code: 'SNAPSHOT_EXISTS' });
    await s.prepare('active', 'gc');
    await expect(s.prepare('y', 'active')).rejects.toMatchObject({
      code: 'SNAPSHOT_INVALID_STATE',
    });
    await s.remove('active');
  });

  it('is found again by a new instance on the same dir', async () => {
    const again = await backend.open(join(root, 'state'));
    expect((await again.list()).map((i) => `${i.key}:${i.kind}:${i.parent ?? ''}`)).toEqual([
      'base:committed:',
      'child:committed:base',
      'gc:committed:child',
    ]);
    await withMounted(again, 'gc', tmp, async (d) => {
      expect(await names(d)).toEqual(['a', 'a-link', 'b', 'c', 'dir']);
    });
    await again.remove('gc');
    await again.remove('child');
    await again.remove('base');
    expect(await again.list()).toEqual([]);
    expect(await readdir(join(root, 'state', 'snapshots'))).toEqual([]);
  });
});

describe('overlay snapshotter: long chains', () => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'kiln-snap-chain-'));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('flattens an ancestor when the chain exceeds maxLowerDirs, keeping deletions', async () => {
    const s = await OverlaySnapshotter.open({ root: join(root, 'state'), maxLowerDirs: 3 });
    const tmp = join(root, 'mnt');
    let parent: string | undefined;
    for (let i = 0; i < 7; i++) {
      await s.prepare(`w${i}`, parent);
      await withMounted(s, `w${i}`, tmp, async (d) => {
        await writeFile(join(d, `f${i}`), String(i));
        if (i === 4) await unlink(join(d, 'f1'));
      });
      await s.commit(`c${i}`, `w${i}`);
      parent = `c${i}`;
    }
    const specs = await s.mounts('c6');
    const lowers = specs[0]!.options.find((o) => o.startsWith('lowerdir='))!.split(':');
    expect(lowers.length).toBeLessThanOrEqual(3);
    await withMounted(s, 'c6', tmp, async (d) => {
      expect(await names(d)).toEqual(['f0', 'f2', 'f3', 'f4', 'f5', 'f6']);
    });
    // still correct after a restart, and the flattened copy goes with its snapshot
    const again = await OverlaySnapshotter.open({ root: join(root, 'state'), maxLowerDirs: 3 });
    await withMounted(again, 'c6', tmp, async (d) => {
      expect(await readFile(join(d, 'f5'), 'utf8')).toBe('5');
    });
    for (let i = 6; i >= 0; i--) await again.remove(`c${i}`);
    expect(await readdir(join(root, 'state', 'snapshots'))).toEqual([]);
  });

  it('mounts a chain whose absolute lowerdir option would not fit one page, with relative paths', async () => {
    const state = join(root, `state-${'long'.repeat(30)}`);
    const s = await OverlaySnapshotter.open({ root: state });
    let parent: string | undefined;
    for (let i = 0; i < 40; i++) {
      await s.prepare(`lw${i}`, parent);
      await writeFile(join((await s.upperDir(`lw${i}`))!, `f${i}`), String(i));
      await s.commit(`lc${i}`, `lw${i}`);
      parent = `lc${i}`;
    }
    const [spec] = await s.mounts('lc39');
    expect(spec!.cwd).toBe(join(state, 'snapshots'));
    expect(spec!.options.join(',').length).toBeLessThan(4096);
    expect(spec!.options.find((o) => o.startsWith('lowerdir='))!.split(':')).toHaveLength(40);
    await withMounted(s, 'lc39', join(root, 'mnt'), async (d) => {
      expect(await names(d)).toHaveLength(40);
      expect(await readFile(join(d, 'f0'), 'utf8')).toBe('0');
    });
  });

  it('unmounts what a dead process left mounted under its tmp dir', async () => {
    const state = join(root, 'state-stale');
    const s = await OverlaySnapshotter.open({ root: state });
    await s.prepare('w');
    await s.commit('c', 'w');
    const stale = join(state, 'tmp', 'm-stale');
    await mkdir(stale, { recursive: true });
    await mountAll(await s.mounts('c'), stale);
    expect(await readFile('/proc/self/mountinfo', 'utf8')).toContain(stale);
    await OverlaySnapshotter.open({ root: state });
    expect(await readFile('/proc/self/mountinfo', 'utf8')).not.toContain(stale);
    await expect(stat(stale)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('mounts a writable snapshot volatile (no sync of the disk at unmount), and mounts it again', async () => {
    const state = join(root, 'state-volatile');
    const s = await OverlaySnapshotter.open({ root: state });
    await s.prepare('base-w');
    await s.commit('base', 'base-w');
    const specs = await s.prepare('w', 'base');
    expect(specs[0]?.options).toContain('volatile');
    expect((await s.mounts('base'))[0]?.options ?? []).not.toContain('volatile');
    const tmp = join(state, 'tmp');
    for (const n of ['one', 'two']) {
      const m = await mountTemp(await s.mounts('w'), tmp);
      try {
        await writeFile(join(m.path, n), n);
      } finally {
        await m.release();
      }
    }
    await s.commit('c', 'w');
    await withMounted(s, 'c', tmp, async (d) => {
      expect(await names(d)).toEqual(['one', 'two']);
    });
  });

  it('openSnapshotter picks overlayfs here', async () => {
    const s = await openSnapshotter({ root: join(root, 'auto') });
    expect(s.backend).toBe('overlayfs');
  });
});
