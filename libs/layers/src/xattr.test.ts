/**
 * Extended attributes through layers, on the real filesystem (as root: `trusted.*` and
 * `security.*` need it). Values are checked with getfattr directly and, for the tar side, with GNU
 * tar as an independent PAX reader and writer.
 */
import { link, mkdir, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyLayer } from './apply-layer.js';
import { diffLayer } from './diff-layer.js';
import type { DiffSource } from './diff-layer.js';
import { LayerError } from './errors.js';
import { parsePaxXattrs } from './tar-xattrs.js';
import { readTreeXattrs } from './xattr.js';
import { encodePaxHeader } from './pax.js';
import {
  CAPABILITY,
  buildTar,
  exec,
  getx,
  hexXattrs,
  mountOverlay,
  readAll,
  setx,
  makeTempDir,
} from '@kiln/testing';
import type { TarEntry } from '@kiln/testing';

/** Bytes that a UTF-8 round trip would corrupt: invalid sequences, NUL, newline, `=`. */
const BINARY = Buffer.from([0xff, 0xfe, 0x00, 0x0a, 0x3d, 0xc3, 0x28, 0x80]);
const LONG_NAME = `${'répertoire-long-'.repeat(5)}/${'fichier-'.repeat(12)}é.bin`;
const T0 = new Date(1_600_000_000_000);

async function layerBytes(source: DiffSource): Promise<Buffer> {
  const layer = diffLayer(source, { compression: 'gzip' });
  const [data] = await Promise.all([readAll(layer.stream), layer.done]);
  return data;
}

async function plainTar(source: DiffSource): Promise<Buffer> {
  const { gunzipSync } = await import('node:zlib');
  return gunzipSync(await layerBytes(source));
}

/** Stamps every path below `root` (not root itself) with T0, deepest first. */
async function stamp(root: string, paths: string[]): Promise<void> {
  for (const p of [...paths].sort().reverse()) {
    await exec('touch', ['-h', '-d', T0.toISOString(), join(root, p)]);
  }
}

/** A tree with attributes on a file, a directory, a symlink, hardlinks and a long UTF-8 name. */
async function makeTree(root: string, order: 'forward' | 'reverse' = 'forward'): Promise<void> {
  await mkdir(join(root, 'bin'), { recursive: true });
  await mkdir(join(root, LONG_NAME.split('/')[0]!));
  await writeFile(join(root, 'bin/ping'), 'ELF...');
  await writeFile(join(root, 'plain.txt'), 'no attributes');
  await writeFile(join(root, LONG_NAME), 'long');
  await writeFile(join(root, 'bin/hl-a'), 'shared inode');
  await link(join(root, 'bin/hl-a'), join(root, 'bin/hl-b'));
  await symlink('ping', join(root, 'bin/link'));
  const sets: [string, string, Buffer][] = [
    ['bin/ping', 'user.foo', Buffer.from('bar')],
    ['bin/ping', 'security.capability', CAPABILITY],
    ['bin/ping', 'user.bin', BINARY],
    ['bin/ping', 'user.empty', Buffer.alloc(0)],
    ['bin', 'user.dir', Buffer.from('on a directory')],
    ['bin/link', 'trusted.on-symlink', Buffer.from([1, 2, 3])],
    ['bin/hl-a', 'user.hl', Buffer.from('shared')],
    [LONG_NAME, 'user.long', Buffer.from('x'.repeat(300))],
  ];
  for (const [p, n, v] of order === 'forward' ? sets : [...sets].reverse()) {
    await setx(join(root, p), n, v);
  }
  await stamp(root, ['bin', 'bin/ping', 'plain.txt', LONG_NAME, LONG_NAME.split('/')[0]!]);
  await stamp(root, ['bin/hl-a', 'bin/link']);
  await utimes(join(root, 'bin'), T0, T0);
}

/** Every attribute below `root`, as plain data for deep equality. */
const dumpXattrs = async (root: string) => hexXattrs(await readTreeXattrs(root));

describe('extended attributes in layers', () => {
  let work: string;
  beforeAll(() => {
    work = makeTempDir('xattr').dir;
  });
  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
  });

  it('diffs binary and text attributes into SCHILY.xattr records and applies them byte-exact', async () => {
    const src = join(work, 'rt-src');
    await mkdir(src);
    await makeTree(src);
    const expected = await dumpXattrs(src);
    expect(expected['bin/ping']).toEqual({
      'security.capability': CAPABILITY.toString('hex'),
      'user.bin': BINARY.toString('hex'),
      'user.empty': '',
      'user.foo': Buffer.from('bar').toString('hex'),
    });

    const tarData = await plainTar({ kind: 'compare', newDir: src });
    // The raw bytes are in the tar as they are on disk.
    expect(tarData.includes(Buffer.concat([Buffer.from('SCHILY.xattr.user.bin='), BINARY]))).toBe(
      true,
    );
    expect(
      tarData.includes(
        Buffer.concat([Buffer.from('SCHILY.xattr.security.capability='), CAPABILITY]),
      ),
    ).toBe(true);

    const dst = join(work, 'rt-dst');
    await mkdir(dst);
    await applyLayer(Readable.from([tarData]), dst);
    expect(await dumpXattrs(dst)).toEqual(expected);
    expect(await getx(join(dst, 'bin/ping'), 'security.capability')).toEqual(CAPABILITY);
    expect(await getx(join(dst, 'bin/ping'), 'user.bin')).toEqual(BINARY);
    // The symlink's own attribute, not its target's.
    expect(await getx(join(dst, 'bin/link'), 'trusted.on-symlink')).toEqual(Buffer.from([1, 2, 3]));
    expect(await getx(join(dst, 'bin/ping'), 'trusted.on-symlink')).toBeUndefined();
  });

  it('writes PAX headers that GNU tar reads, and reads the ones GNU tar writes', async () => {
    const src = join(work, 'gnu-src');
    await mkdir(src);
    await makeTree(src);
    const expected = await dumpXattrs(src);

    const ours = join(work, 'gnu-ours.tar');
    await writeFile(ours, await plainTar({ kind: 'compare', newDir: src }));
    const byGnu = join(work, 'gnu-extracted');
    await mkdir(byGnu);
    await exec('tar', ['--xattrs', '--xattrs-include=*', '-xpf', ours, '-C', byGnu]);
    expect(await dumpXattrs(byGnu)).toEqual(expected);

    const theirs = join(work, 'gnu-theirs.tar');
    await exec('tar', [
      '--xattrs',
      '--xattrs-include=*',
      '--format=posix',
      '-cf',
      theirs,
      '-C',
      src,
      'bin',
      LONG_NAME.split('/')[0]!,
    ]);
    const byUs = join(work, 'gnu-applied');
    await mkdir(byUs);
    const { readFile } = await import('node:fs/promises');
    await applyLayer(Readable.from([await readFile(theirs)]), byUs);
    expect(await dumpXattrs(byUs)).toEqual(expected);
  });

  it('gives the same bytes for the same change, whatever order the attributes were set in', async () => {
    const a = join(work, 'det-a');
    const b = join(work, 'det-b');
    await mkdir(a);
    await mkdir(b);
    await makeTree(a, 'forward');
    await makeTree(b, 'reverse');
    const la = await layerBytes({ kind: 'compare', newDir: a });
    expect(await layerBytes({ kind: 'compare', newDir: a })).toEqual(la);
    expect(await layerBytes({ kind: 'compare', newDir: b })).toEqual(la);
  });

  it('counts an attribute-only change when comparing trees', async () => {
    const base = join(work, 'only-base');
    const next = join(work, 'only-next');
    for (const d of [base, next]) {
      await mkdir(d);
      await writeFile(join(d, 'same.txt'), 'same');
      await writeFile(join(d, 'tagged.txt'), 'same');
      await setx(join(d, 'tagged.txt'), 'user.v', Buffer.from('1'));
      await stamp(d, ['same.txt', 'tagged.txt']);
    }
    expect(await plainTar({ kind: 'compare', baseDir: base, newDir: next })).toHaveLength(1024);
    await setx(join(next, 'tagged.txt'), 'user.v', Buffer.from('2'));
    const data = await plainTar({ kind: 'compare', baseDir: base, newDir: next });
    expect(data.includes(Buffer.from('SCHILY.xattr.user.v=2\n'))).toBe(true);
    expect(data.includes(Buffer.from('same.txt'))).toBe(false);
  });

  it('never writes trusted.overlay.* or user.overlay.* (overlayfs markers) nor security.selinux', async () => {
    const lower = join(work, 'ov-lower');
    const upper = join(work, 'ov-upper');
    const wd = join(work, 'ov-work');
    const merged = join(work, 'ov-merged');
    const parent = join(work, 'ov-parent');
    for (const d of [lower, upper, wd, merged]) await mkdir(d);
    await mkdir(join(lower, 'dir'));
    await writeFile(join(lower, 'dir/old'), 'old');
    await exec('cp', ['-a', `${lower}/.`, parent]);
    await mountOverlay(merged, `lowerdir=${lower},upperdir=${upper},workdir=${wd}`);
    try {
      // rm + mkdir over a lower directory: overlayfs marks the new one opaque by an xattr.
      await rm(join(merged, 'dir'), { recursive: true });
      await mkdir(join(merged, 'dir'));
      await writeFile(join(merged, 'dir/new'), 'new');
      await setx(join(merged, 'dir/new'), 'user.keep', Buffer.from('kept'));
      expect(await getx(join(upper, 'dir'), 'trusted.overlay.opaque')).toEqual(Buffer.from('y'));
      await exec('umount', [merged]);
      await mountOverlay(merged, `ro,lowerdir=${upper}:${lower}`);
      const data = await plainTar({
        kind: 'overlay',
        upperDir: upper,
        lowerDir: lower,
        mergedDir: merged,
      });
      expect(data.includes(Buffer.from('dir/.wh..wh..opq'))).toBe(true);
      expect(data.includes(Buffer.from('SCHILY.xattr.user.keep=kept\n'))).toBe(true);
      expect(data.includes(Buffer.from('trusted.overlay'))).toBe(false);

      const applied = join(work, 'ov-applied');
      await exec('cp', ['-a', parent, applied]);
      await applyLayer(Readable.from([data]), applied);
      expect(await dumpXattrs(applied)).toEqual({
        'dir/new': { 'user.keep': Buffer.from('kept').toString('hex') },
      });
    } finally {
      await exec('umount', [merged]).catch(() => undefined);
    }

    // In a compared tree too (as root anything can be set by hand).
    const tree = join(work, 'ov-compare');
    await mkdir(tree);
    await writeFile(join(tree, 'f'), 'f');
    await setx(join(tree, 'f'), 'trusted.overlay.origin', Buffer.from([0, 1]));
    // overlayfs's markers when mounted with `userxattr` (a worker in a user namespace)
    await setx(join(tree, 'f'), 'user.overlay.opaque', Buffer.from('y'));
    await setx(join(tree, 'f'), 'security.selinux', Buffer.from('system_u:object_r:etc_t:s0\0'));
    await setx(join(tree, 'f'), 'user.other', Buffer.from('o'));
    const data = await plainTar({ kind: 'compare', newDir: tree });
    expect(data.includes(Buffer.from('trusted.overlay'))).toBe(false);
    expect(data.includes(Buffer.from('user.overlay'))).toBe(false);
    expect(data.includes(Buffer.from('security.selinux'))).toBe(false);
    expect(data.includes(Buffer.from('SCHILY.xattr.user.other=o\n'))).toBe(true);
  });
});

/** Raw tar bytes: an optional PAX header with `records` before each entry, then the end marker. */
async function paxTar(parts: { records?: [string, Buffer][]; entry: TarEntry }[]): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for (const { records, entry } of parts) {
    if (records !== undefined) {
      chunks.push(
        encodePaxHeader(records, {
          name: entry.name,
          mode: 0o644,
          mtime: T0,
        }),
      );
    }
    const one = await buildTar([entry]);
    chunks.push(one.subarray(0, one.length - 1024));
  }
  chunks.push(Buffer.alloc(1024));
  return Buffer.concat(chunks);
}

describe('extended attributes from hostile layers', () => {
  let work: string;
  beforeAll(() => {
    work = makeTempDir('xattr-hostile').dir;
  });
  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
  });

  async function applyTo(name: string, data: Buffer): Promise<string> {
    const root = join(work, name);
    await mkdir(root);
    await applyLayer(Readable.from([data]), root);
    return root;
  }

  async function applyError(name: string, data: Buffer): Promise<LayerError> {
    const err = await applyTo(name, data).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LayerError);
    return err as LayerError;
  }

  it('encodes record lengths that count their own digits, across digit boundaries', () => {
    // Records of 99/100/101 bytes, 999/1000/1001 and 9999/10000/10001 around here.
    const around = (n: number): number[] => Array.from({ length: 12 }, (_, i) => n - 6 + i);
    for (const n of [...around(77), ...around(975), ...around(9974)]) {
      const value = Buffer.alloc(n, 0x61);
      const block = encodePaxHeader([['SCHILY.xattr.user.n', value]], { name: 'x' });
      const size = parseInt(block.toString('latin1', 124, 135), 8);
      const data = block.subarray(512, 512 + size);
      const len = parseInt(data.toString('latin1', 0, data.indexOf(0x20)), 10);
      expect(len).toBe(size);
      expect(parsePaxXattrs(data).get('user.n')).toEqual(value);
    }
  });

  it('ignores overlay markers, unknown namespaces and global headers, sets the rest', async () => {
    const data = await paxTar([
      {
        records: [
          ['SCHILY.xattr.trusted.overlay.opaque', Buffer.from('y')],
          ['SCHILY.xattr.nonsense.name', Buffer.from('?')],
          ['SCHILY.xattr.user.ok', Buffer.from([0xff, 0x00])],
          ['LIBARCHIVE.xattr.user.other', Buffer.from('b3RoZXI=')],
        ],
        entry: { name: 'd', type: 'directory' },
      },
      { entry: { name: 'd/f', content: 'f' } },
    ]);
    const root = await applyTo('ignored', data);
    expect(await dumpXattrs(root)).toEqual({ d: { 'user.ok': 'ff00' } });
  });

  it('rejects a NUL in a name, an empty or too long name, a huge value, a malformed record', async () => {
    const cases: [string, [string, Buffer][]][] = [
      ['nul', [['SCHILY.xattr.user.a\0b', Buffer.from('v')]]],
      ['empty', [['SCHILY.xattr.', Buffer.from('v')]]],
      ['long', [[`SCHILY.xattr.user.${'n'.repeat(251)}`, Buffer.from('v')]]],
      ['huge', [['SCHILY.xattr.user.big', Buffer.alloc(65537)]]],
    ];
    for (const [name, records] of cases) {
      const err = await applyError(
        `bad-${name}`,
        await paxTar([{ records, entry: { name: 'f', content: 'f' } }]),
      );
      expect(err.code).toBe('LAYER_INVALID');
    }
    // A record whose length runs past the header.
    const good = await paxTar([
      { records: [['SCHILY.xattr.user.a', Buffer.from('v')]], entry: { name: 'f', content: 'f' } },
    ]);
    const bad = Buffer.from(good);
    bad.write('99', 512, 'latin1');
    expect((await applyError('bad-length', bad)).code).toBe('LAYER_INVALID');
  });

  it('sets nothing outside the root when a later entry swaps a directory for a symlink', async () => {
    const outside = join(work, 'outside');
    await mkdir(outside);
    await writeFile(join(outside, 'f'), 'not to be touched');
    const data = await paxTar([
      { entry: { name: 'a', type: 'directory' } },
      {
        records: [['SCHILY.xattr.user.evil', Buffer.from('1')]],
        entry: { name: 'a/f', content: 'x' },
      },
      { entry: { name: 'a', type: 'symlink', linkname: outside } },
    ]);
    const root = await applyTo('swap', data);
    expect(await getx(join(outside, 'f'), 'user.evil')).toBeUndefined();
    expect(await dumpXattrs(outside)).toEqual({});
    expect(await dumpXattrs(root)).toEqual({});
  });

  it('fails an apply whose attributes cannot be set (user.* on a symlink), as containerd does', async () => {
    const data = await paxTar([
      {
        records: [['SCHILY.xattr.user.x', Buffer.from('1')]],
        entry: { name: 'l', type: 'symlink', linkname: 'target' },
      },
    ]);
    const err = await applyError('user-on-symlink', data);
    expect(err.code).toBe('LAYER_IO');
    expect(err.message).toMatch(/: user\.[^:]*: EPERM/);
  });
});
