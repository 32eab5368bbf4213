import {
  chmod,
  chown,
  link,
  mkdir,
  readFile,
  rm,
  symlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { DigestMismatchError, FsBlobStore } from '@kiln/store';
import { lsetxattr } from '@kiln/sys';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyLayer } from './apply-layer.js';
import { zstdSupport } from './compression.js';
import { LayerError } from './errors.js';
import { diffLayer, writeLayer } from './diff-layer.js';
import type { DiffOptions, DiffSource } from './diff-layer.js';
import {
  buildTar,
  exec,
  mountOverlay,
  readAll,
  snapshotTree,
  tarNames,
  makeTempDir,
} from '@kiln/testing';

const T0 = new Date(1_600_000_000_000);
const T1 = new Date(1_650_000_000_000);
const LONG = `${'long-directory-name-'.repeat(4)}/${'file-with-a-long-name-'.repeat(4)}.txt`;

/** Tree A: the parent snapshot. */
async function makeBase(dir: string): Promise<void> {
  await mkdir(join(dir, 'deldir/b'), { recursive: true });
  await mkdir(join(dir, 'replaced/sub'), { recursive: true });
  await mkdir(join(dir, 'd2f'), { recursive: true });
  await mkdir(join(dir, 'etc'), { recursive: true });
  await mkdir(join(dir, 'partial'), { recursive: true });
  const files: Record<string, string> = {
    'keep.txt': 'keep',
    'del.txt': 'delete me',
    'deldir/a': 'a',
    'deldir/b/c': 'c',
    'replaced/old1': 'old1',
    'replaced/old2': 'old2',
    'replaced/sub/x': 'x',
    'mode.sh': '#!/bin/sh\n',
    'modified.txt': 'version 1',
    'hl-src.txt': 'linked content',
    f2d: 'file becomes dir',
    'd2f/inner': 'dir becomes file',
    'etc/passwd': 'root:x:0:0::/root:/bin/sh\n',
    'owner.txt': 'owned',
    'partial/gone': 'deleted next to an unchanged sibling',
    'partial/stays': 'unchanged',
  };
  for (const [p, c] of Object.entries(files)) await writeFile(join(dir, p), c);
  await chmod(join(dir, 'mode.sh'), 0o644);
}

/** Tree B = A with every kind of change; `root` is where the changes are made (a copy, or an overlay mount). */
async function mutate(dir: string): Promise<void> {
  await rm(join(dir, 'del.txt'));
  await rm(join(dir, 'partial/gone'));
  await rm(join(dir, 'deldir'), { recursive: true });
  await rm(join(dir, 'replaced'), { recursive: true });
  await mkdir(join(dir, 'replaced'));
  await writeFile(join(dir, 'replaced/new'), 'fresh');
  await chmod(join(dir, 'mode.sh'), 0o755);
  await writeFile(join(dir, 'modified.txt'), 'version 2, longer');
  await link(join(dir, 'hl-src.txt'), join(dir, 'hl-dst.txt'));
  await mkdir(join(dir, 'newdir/deep'), { recursive: true });
  await writeFile(join(dir, 'newdir/deep/file.txt'), 'deep');
  await writeFile(join(dir, 'new-a'), 'shared inode');
  await link(join(dir, 'new-a'), join(dir, 'newdir/new-b'));
  await symlink('keep.txt', join(dir, 'sym'));
  await symlink('/etc/passwd', join(dir, 'abs-sym'));
  await rm(join(dir, 'f2d'));
  await mkdir(join(dir, 'f2d'));
  await writeFile(join(dir, 'f2d/child'), 'child');
  await rm(join(dir, 'd2f'), { recursive: true });
  await writeFile(join(dir, 'd2f'), 'now a file');
  await chown(join(dir, 'owner.txt'), 1234, 5678);
  await writeFile(join(dir, 'setuid'), 'suid');
  await chmod(join(dir, 'setuid'), 0o4755);
  await writeFile(join(dir, 'empty'), '');
  await writeFile(join(dir, 'héllo-世界.txt'), 'a name that needs a PAX record');
  await mkdir(join(dir, LONG.split('/')[0]!));
  await writeFile(join(dir, LONG), 'long name');
  await exec('mkfifo', [join(dir, 'fifo')]);
  await writeFile(
    join(dir, 'etc/passwd'),
    'root:x:0:0::/root:/bin/sh\nkiln:x:1000:1000::/home/kiln:/bin/sh\n',
  );
}

/** Fixed mtimes everywhere, so that snapshots compare exactly and runs are reproducible. */
async function stampTimes(dir: string, t: Date): Promise<void> {
  const { stdout } = await exec('find', [dir, '-depth', '-not', '-type', 'l', '-print0']);
  for (const p of stdout.split('\0').filter(Boolean)) await utimes(p, t, t);
}

async function copyTree(src: string, dst: string): Promise<void> {
  await exec('cp', ['-a', `${src}/.`, dst]);
}

async function diffToBuffer(
  source: DiffSource,
  opts?: DiffOptions,
): Promise<{ data: Buffer; diffID: string; digest: string; size: number; mediaType: string }> {
  const layer = diffLayer(source, opts);
  const [data, desc] = await Promise.all([readAll(layer.stream), layer.done]);
  return { data, ...desc };
}

describe('diffLayer + applyLayer', () => {
  let work: string;
  let base: string;
  let next: string;

  beforeAll(async () => {
    work = makeTempDir('diff').dir;
    base = join(work, 'A');
    next = join(work, 'B');
    await mkdir(base);
    await mkdir(next);
    await makeBase(base);
    await stampTimes(base, T0);
    await copyTree(base, next);
    await mutate(next);
    await stampTimes(next, T1);
    // Unchanged entries keep A's times in B, as a real copy-on-write snapshot would.
    for (const p of ['keep.txt', 'hl-src.txt', 'hl-dst.txt', 'etc', 'partial/stays'])
      await utimes(join(next, p), T0, T0);
  });
  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
  });

  it('compares two trees into a layer that turns A into B exactly', async () => {
    const layer = await diffToBuffer({ kind: 'compare', baseDir: base, newDir: next });
    expect(layer.mediaType).toBe('application/vnd.oci.image.layer.v1.tar+gzip');
    const names = await tarNames(layer.data);
    expect(names).toEqual(
      expect.arrayContaining([
        '.wh.del.txt',
        '.wh.deldir',
        'replaced/.wh.old1',
        'replaced/new',
        'mode.sh',
        'sym',
        'newdir/new-b => new-a',
        // Byte order makes hl-dst.txt the first name of the inode; the unchanged hl-src.txt is
        // written again as a link to it so that the link survives.
        'hl-dst.txt',
        'hl-src.txt => hl-dst.txt',
        'f2d/',
        'f2d/child',
        'd2f',
        LONG,
      ]),
    );
    expect(names).not.toContain('keep.txt');
    expect(names).not.toContain('deldir/a');

    const target = join(work, 'apply-compare');
    await mkdir(target);
    await copyTree(base, target);
    const res = await applyLayer(Readable.from([layer.data]), target);
    expect(res.compression).toBe('gzip');
    expect(res.diffID).toBe(layer.diffID);
    expect(await snapshotTree(target)).toEqual(await snapshotTree(next));
  });

  it('produces identical bytes for the same change', async () => {
    const a = await diffToBuffer({ kind: 'compare', baseDir: base, newDir: next });
    const b = await diffToBuffer({ kind: 'compare', baseDir: base, newDir: next });
    expect(b.digest).toBe(a.digest);
    expect(b.diffID).toBe(a.diffID);
    expect(b.data.equals(a.data)).toBe(true);

    // A copy of the same trees made at another time (other mtimes, other inodes) with the
    // epoch clamp gives the same layer too.
    const base2 = join(work, 'A2');
    const next2 = join(work, 'B2');
    await mkdir(base2);
    await mkdir(next2);
    await makeBase(base2);
    await copyTree(base2, next2);
    await mutate(next2);
    const epoch = 1_000_000_000;
    const c = await diffToBuffer(
      { kind: 'compare', baseDir: base2, newDir: next2 },
      { sourceDateEpoch: epoch },
    );
    const d = await diffToBuffer(
      { kind: 'compare', baseDir: base, newDir: next },
      { sourceDateEpoch: epoch },
    );
    expect(c.digest).toBe(d.digest);
    expect(c.diffID).toBe(d.diffID);
  });

  it('has the same diffID whatever the compression, and detects each on apply', async () => {
    const src: DiffSource = { kind: 'compare', baseDir: base, newDir: next };
    const plain = await diffToBuffer(src, { compression: 'none' });
    const gz = await diffToBuffer(src, { compression: 'gzip' });
    expect(plain.mediaType).toBe('application/vnd.oci.image.layer.v1.tar');
    expect(plain.diffID).toBe(gz.diffID);
    expect(plain.digest).toBe(plain.diffID);
    expect(gz.digest).not.toBe(gz.diffID);
    expect(gz.size).toBeLessThan(plain.size);

    for (const [layer, kind] of [
      [plain, 'none'],
      [gz, 'gzip'],
    ] as const) {
      const target = join(work, `apply-${kind}`);
      await mkdir(target);
      await copyTree(base, target);
      const res = await applyLayer(Readable.from([layer.data]), target);
      expect(res.compression).toBe(kind);
      expect(res.diffID).toBe(plain.diffID);
      expect(await snapshotTree(target)).toEqual(await snapshotTree(next));
    }
  });

  it('round-trips zstd through the zstd support found here', async () => {
    expect(zstdSupport()).toBeDefined();
    const src: DiffSource = { kind: 'compare', baseDir: base, newDir: next };
    const zst = await diffToBuffer(src, { compression: 'zstd' });
    const plain = await diffToBuffer(src, { compression: 'none' });
    expect(zst.mediaType).toBe('application/vnd.oci.image.layer.v1.tar+zstd');
    expect(zst.data.readUInt32LE(0)).toBe(0xfd2fb528);
    expect(zst.diffID).toBe(plain.diffID);
    const target = join(work, 'apply-zstd');
    await mkdir(target);
    await copyTree(base, target);
    const res = await applyLayer(Readable.from([zst.data]), target);
    expect(res.compression).toBe('zstd');
    expect(res.diffID).toBe(plain.diffID);
    expect(await snapshotTree(target)).toEqual(await snapshotTree(next));
  });

  it('clamps mtimes to SOURCE_DATE_EPOCH', async () => {
    const epoch = 1_620_000_000; // between T0 and T1
    const layer = await diffToBuffer(
      { kind: 'compare', baseDir: base, newDir: next },
      { sourceDateEpoch: epoch },
    );
    const target = join(work, 'apply-epoch');
    await mkdir(target);
    await copyTree(base, target);
    await applyLayer(Readable.from([layer.data]), target);
    const snap = await snapshotTree(target);
    expect(snap['replaced/new']?.mtime).toBe(epoch);
    expect(snap['modified.txt']?.mtime).toBe(epoch);
    expect(snap['keep.txt']?.mtime).toBe(T0.getTime() / 1000);
  });

  it('writes a full layer into a BlobStore and applies it from there onto an empty root', async () => {
    const store = new FsBlobStore({ root: join(work, 'store') });
    const desc = await writeLayer(store, { kind: 'compare', newDir: next });
    expect(await store.stat(desc.digest)).toEqual({ size: desc.size });
    const target = join(work, 'apply-full');
    await mkdir(target);
    const res = await applyLayer(await store.get(desc.digest), target);
    expect(res.diffID).toBe(desc.diffID);
    expect(await snapshotTree(target)).toEqual(await snapshotTree(next));
  });

  it('applies files larger than the write batch and than the read and decompress chunks, byte for byte', async () => {
    const src = join(work, 'big-src');
    await mkdir(src);
    // 3 MiB + 5 (batched writes, last batch short), 256 KiB exactly (the small-file bound) and
    // 256 KiB + 1: sizes at the edges of the write paths.
    const sizes = { big: 3 * 1024 * 1024 + 5, edge: 256 * 1024, over: 256 * 1024 + 1 };
    for (const [name, size] of Object.entries(sizes))
      await writeFile(join(src, name), randomBytes(size));
    const store = new FsBlobStore({ root: join(work, 'store-big') });
    for (const compression of ['gzip', 'none'] as const) {
      const desc = await writeLayer(store, { kind: 'compare', newDir: src }, { compression });
      const target = join(work, `apply-big-${compression}`);
      await mkdir(target);
      const res = await applyLayer(await store.get(desc.digest), target);
      expect(res.diffID).toBe(desc.diffID);
      for (const name of Object.keys(sizes))
        expect((await readFile(join(target, name))).equals(await readFile(join(src, name)))).toBe(
          true,
        );
    }
  });

  it('fails an apply from a blob whose stored bytes are corrupt', async () => {
    const store = new FsBlobStore({ root: join(work, 'store-corrupt') });
    const desc = await writeLayer(
      store,
      { kind: 'compare', newDir: next },
      { compression: 'none' },
    );
    const path = store.pathOf(desc.digest);
    const bytes = await readFile(path);
    const at = bytes.indexOf('version 2, longer');
    expect(at).toBeGreaterThan(0);
    bytes[at] = 'V'.charCodeAt(0); // same size, valid tar: only the digest can tell
    await chmod(path, 0o644);
    await writeFile(path, bytes);
    const target = join(work, 'apply-corrupt');
    await mkdir(target);
    const err = await applyLayer(await store.get(desc.digest), target).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DigestMismatchError);
  });

  it('diffs an overlayfs upper directory: whiteouts, opaque dirs, and applies back exactly', async () => {
    const lower = join(work, 'ov-lower');
    const upper = join(work, 'ov-upper');
    const wd = join(work, 'ov-work');
    const merged = join(work, 'ov-merged');
    for (const d of [lower, upper, wd, merged]) await mkdir(d);
    await makeBase(lower);
    await stampTimes(lower, T0);
    await mountOverlay(merged, `lowerdir=${lower},upperdir=${upper},workdir=${wd}`);
    let expected: Awaited<ReturnType<typeof snapshotTree>>;
    let layer: Awaited<ReturnType<typeof diffToBuffer>>;
    try {
      await mutate(merged);
      expected = await snapshotTree(merged);
      expect(() => diffLayer({ kind: 'overlay', upperDir: upper, lowerDir: lower })).toThrow(
        LayerError,
      );
      layer = await diffToBuffer({
        kind: 'overlay',
        upperDir: upper,
        lowerDir: lower,
        mergedDir: merged,
      });
    } finally {
      await exec('umount', [merged]);
    }
    const names = await tarNames(layer.data);
    expect(names).toEqual(
      expect.arrayContaining([
        '.wh.del.txt',
        '.wh.deldir',
        'replaced/',
        'replaced/.wh..wh..opq',
        'replaced/new',
        'partial/',
        'partial/.wh.gone',
        'hl-dst.txt',
        'hl-src.txt => hl-dst.txt',
        'newdir/new-b => new-a',
      ]),
    );
    // The opaque marker comes right after its directory, before the directory's new content.
    expect(names.indexOf('replaced/.wh..wh..opq')).toBe(names.indexOf('replaced/') + 1);
    expect(names.some((n) => n.startsWith('replaced/old'))).toBe(false);
    // A directory with a deleted child next to an unchanged one is not opaque.
    expect(names).not.toContain('partial/.wh..wh..opq');
    expect(names).not.toContain('etc/.wh..wh..opq');

    const target = join(work, 'apply-overlay');
    await mkdir(target);
    await copyTree(lower, target);
    await applyLayer(Readable.from([layer.data]), target);
    expect(await snapshotTree(target)).toEqual(expected);
  });

  it('diffs an upper dir against its lower layers unmounted exactly as against the mounted views', async () => {
    const dir = (n: string): string => join(work, `ml-${n}`);
    for (const n of ['l1', 'l2', 'w2', 'm2', 'up', 'w3', 'm3', 'low']) await mkdir(dir(n));
    await makeBase(dir('l1'));
    await writeFile(join(dir('l1'), 'replaced/old3'), 'old3');
    await stampTimes(dir('l1'), T0);
    // Layer 2, over layer 1: a deleted directory, an opaque one, a directory become a file.
    await mountOverlay(
      dir('m2'),
      `lowerdir=${dir('l1')},upperdir=${dir('l2')},workdir=${dir('w2')}`,
    );
    try {
      const m = dir('m2');
      await rm(join(m, 'deldir'), { recursive: true });
      await rm(join(m, 'replaced'), { recursive: true });
      await mkdir(join(m, 'replaced'));
      await writeFile(join(m, 'replaced/l2'), 'l2');
      await writeFile(join(m, 'replaced/l2b'), 'l2b');
      await rm(join(m, 'd2f'), { recursive: true });
      await writeFile(join(m, 'd2f'), 'a file in layer 2');
      await mkdir(join(m, 'l2only'));
      await writeFile(join(m, 'l2only/a'), 'a');
      await rm(join(m, 'partial/gone'));
    } finally {
      await exec('umount', [dir('m2')]);
    }
    const lowers = [dir('l2'), dir('l1')];
    const target = join(work, 'apply-ml');
    await mkdir(target);
    // The snapshot diffed: changes through both lower layers.
    await mountOverlay(
      dir('m3'),
      `lowerdir=${lowers.join(':')},upperdir=${dir('up')},workdir=${dir('w3')}`,
    );
    await mountOverlay(dir('low'), `lowerdir=${lowers.join(':')}`);
    let expected: Awaited<ReturnType<typeof snapshotTree>>;
    let unmounted: Awaited<ReturnType<typeof diffToBuffer>>;
    let mounted: Awaited<ReturnType<typeof diffToBuffer>>;
    try {
      const m = dir('m3');
      await mkdir(join(m, 'deldir')); // deleted in layer 2: added again, not opaque
      await writeFile(join(m, 'deldir/again'), 'again');
      await writeFile(join(m, 'replaced/new'), 'new'); // layer 2's opaque dir, partly changed
      await rm(join(m, 'replaced/l2'));
      await rm(join(m, 'l2only'), { recursive: true }); // replaced: opaque over layer 2
      await mkdir(join(m, 'l2only'));
      await writeFile(join(m, 'l2only/b'), 'b');
      await rm(join(m, 'd2f')); // layer 2's file
      await writeFile(join(m, 'partial/gone'), 'back'); // deleted in layer 2
      await rm(join(m, 'del.txt')); // from layer 1, through layer 2
      await rm(join(m, 'etc'), { recursive: true }); // opaque over layer 1 alone
      await mkdir(join(m, 'etc'));
      await writeFile(join(m, 'etc/hosts'), 'hosts');
      expected = await snapshotTree(m);
      await copyTree(dir('low'), target);
      expect(() =>
        diffLayer({
          kind: 'overlay',
          upperDir: dir('up'),
          lowerDir: dir('low'),
          mergedDir: m,
          lowerLayers: lowers,
        }),
      ).toThrow(LayerError);
      unmounted = await diffToBuffer({ kind: 'overlay', upperDir: dir('up'), lowerLayers: lowers });
      mounted = await diffToBuffer({
        kind: 'overlay',
        upperDir: dir('up'),
        lowerDir: dir('low'),
        mergedDir: m,
      });
    } finally {
      await exec('umount', [dir('m3')]);
      await exec('umount', [dir('low')]);
    }
    expect(unmounted.diffID).toBe(mounted.diffID);
    expect(unmounted.data.equals(mounted.data)).toBe(true);
    const names = await tarNames(unmounted.data);
    expect(names).toEqual(
      expect.arrayContaining([
        '.wh.del.txt',
        '.wh.d2f',
        'deldir/',
        'deldir/again',
        'replaced/.wh.l2',
        'replaced/new',
        'l2only/',
        'l2only/.wh..wh..opq',
        'l2only/b',
        'partial/gone',
        'etc/.wh..wh..opq',
      ]),
    );
    expect(names).not.toContain('deldir/.wh..wh..opq');
    expect(names).not.toContain('replaced/.wh..wh..opq');

    // Applied on a copy of the parent's view, the layer gives the snapshot's view.
    await applyLayer(Readable.from([unmounted.data]), target);
    expect(await snapshotTree(target)).toEqual(expected);
  });

  it('reads the opaque marker the snapshots are mounted with (userxattr: user.overlay.opaque)', async () => {
    // Layers as a rootless worker's overlay leaves them: no mount needed to diff them.
    const lower = join(work, 'ux-lower');
    const upper = join(work, 'ux-upper');
    await mkdir(join(lower, 'd'), { recursive: true });
    await writeFile(join(lower, 'd/old'), 'old');
    await mkdir(join(upper, 'd'), { recursive: true });
    await writeFile(join(upper, 'd/new'), 'new');
    lsetxattr(join(upper, 'd'), 'user.overlay.opaque', Buffer.from('y'));
    const names = async (opaqueXattr?: string): Promise<string[]> =>
      tarNames(
        (
          await diffToBuffer({
            kind: 'overlay',
            upperDir: upper,
            lowerLayers: [lower],
            ...(opaqueXattr ? { opaqueXattr } : {}),
          })
        ).data,
      );
    expect(await names('user.overlay.opaque')).toEqual(['d/', 'd/.wh..wh..opq', 'd/new']);
    // Mounted without userxattr, the kernel ignores user.overlay.*: d merges with the lower d.
    expect(await names()).toEqual(['d/', 'd/new']);
  });

  it('applies an opaque whiteout that comes after the directory content of its own layer', async () => {
    const target = join(work, 'apply-opq-late');
    await mkdir(join(target, 'd/sub'), { recursive: true });
    await writeFile(join(target, 'd/old'), 'old');
    await writeFile(join(target, 'd/sub/older'), 'older');
    const data = await buildTar([
      { name: 'd/', type: 'directory' },
      { name: 'd/sub/', type: 'directory' },
      { name: 'd/sub/new', content: 'new' },
      { name: 'd/implicit/deeper/file', content: 'parents not in the layer' },
      { name: 'd/.wh..wh..opq' },
      { name: 'keep-going', content: 'k' },
    ]);
    await applyLayer(Readable.from([data]), target);
    expect(Object.keys(await snapshotTree(target)).sort()).toEqual([
      'd',
      'd/implicit',
      'd/implicit/deeper',
      'd/implicit/deeper/file',
      'd/sub',
      'd/sub/new',
      'keep-going',
    ]);
  });
});
