import { lstat, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { applyLayer, applyTar } from './apply-layer.js';
import type { ApplyOptions } from './apply-layer.js';
import { LayerError } from './errors.js';
import { buildTar, snapshotTree, makeTempDir } from '@kiln/testing';
import type { TarEntry } from '@kiln/testing';

describe('applyLayer against hostile layers', () => {
  let work: string;
  let root: string;
  let outside: string;
  let outsideBefore: Awaited<ReturnType<typeof snapshotTree>>;

  beforeEach(async () => {
    work = makeTempDir('hostile').dir;
    root = join(work, 'root');
    outside = join(work, 'outside');
    await mkdir(root);
    await mkdir(join(outside, 'etc'), { recursive: true });
    await writeFile(join(outside, 'sentinel'), 'do not touch');
    await writeFile(join(outside, 'etc/passwd'), 'root:x:0:0::/root:/bin/sh\n');
    outsideBefore = await snapshotTree(outside);
  });
  afterEach(async () => {
    await rm(work, { recursive: true, force: true });
  });

  /** Applies `entries` and expects LAYER_UNSAFE naming `entry`, with the outside untouched. */
  async function expectUnsafe(
    entries: TarEntry[],
    entry: string,
    opts?: ApplyOptions,
  ): Promise<LayerError> {
    const data = await buildTar(entries);
    const err = await applyLayer(Readable.from([gzipSync(data)]), root, opts).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(LayerError);
    const le = err as LayerError;
    expect(le.code).toBe('LAYER_UNSAFE');
    expect(le.entry).toBe(entry);
    expect(le.details.entry).toBe(entry);
    expect(await snapshotTree(outside)).toEqual(outsideBefore);
    return le;
  }

  it('rejects ".." entries', async () => {
    await expectUnsafe([{ name: '../outside/pwned', content: 'x' }], '../outside/pwned');
    await expectUnsafe([{ name: 'a/../../outside/pwned', content: 'x' }], 'a/../../outside/pwned');
    await expectUnsafe([{ name: './../x', content: 'x' }], './../x');
  });

  /** Applies `entries` (it must succeed) and checks the outside is untouched. */
  async function expectConfined(entries: TarEntry[]): Promise<void> {
    const data = await buildTar(entries);
    await applyLayer(Readable.from([gzipSync(data)]), root);
    expect(await snapshotTree(outside)).toEqual(outsideBefore);
  }

  it('roots absolute entries (containerd): they land below the root', async () => {
    const abs = join(outside, 'pwned');
    await expectConfined([{ name: abs, content: 'x' }]);
    expect(await readFile(join(root, abs), 'utf8')).toBe('x');
    await expectConfined([{ name: '/etc/x', content: 'y' }]);
    expect(await readFile(join(root, 'etc/x'), 'utf8')).toBe('y');
  });

  it('re-roots a symlink to an absolute path outside instead of writing through it', async () => {
    await expectConfined([
      { name: 'a', type: 'symlink', linkname: outside },
      { name: 'a/pwned', content: 'x' },
    ]);
    // The symlink itself is kept as given; the write through it landed below the root.
    expect((await lstat(join(root, 'a'))).isSymbolicLink()).toBe(true);
    expect(await readFile(join(root, outside, 'pwned'), 'utf8')).toBe('x');
  });

  it('clamps a relative symlink that climbs out at the root', async () => {
    await expectConfined([
      { name: 'b', type: 'symlink', linkname: '../outside' },
      { name: 'b/pwned', content: 'x' },
      { name: 'd/', type: 'directory' },
      { name: 'd/up', type: 'symlink', linkname: '../../outside' },
      { name: 'd/up/pwned2', content: 'y' },
    ]);
    expect(await readFile(join(root, 'outside/pwned'), 'utf8')).toBe('x');
    expect(await readFile(join(root, 'outside/pwned2'), 'utf8')).toBe('y');
  });

  it('keeps a symlink chain that ends outside inside the root; refuses a loop', async () => {
    await expectConfined([
      { name: 'd/', type: 'directory' },
      { name: 'd/l1', type: 'symlink', linkname: '../l2' },
      { name: 'l2', type: 'symlink', linkname: 'd/l3' },
      { name: 'd/l3', type: 'symlink', linkname: '../../outside/etc' },
      { name: 'd/l1/passwd', content: 'pwned' },
    ]);
    expect(await readFile(join(root, 'outside/etc/passwd'), 'utf8')).toBe('pwned');
    await expectUnsafe(
      [
        { name: 'loop1', type: 'symlink', linkname: 'loop2' },
        { name: 'loop2', type: 'symlink', linkname: 'loop1' },
        { name: 'loop1/x', content: 'x' },
      ],
      'loop1/x',
    );
  });

  it('resolves a symlink that was already in the root inside it', async () => {
    await symlink(outside, join(root, 'pre'));
    await symlink('../outside', join(root, 'pre-rel'));
    await expectConfined([{ name: 'pre/pwned', content: 'x' }]);
    expect(await readFile(join(root, outside, 'pwned'), 'utf8')).toBe('x');
    await expectConfined([{ name: 'pre-rel/pwned', content: 'y' }]);
    expect(await readFile(join(root, 'outside/pwned'), 'utf8')).toBe('y');
    await expectConfined([{ name: 'pre/.wh.sentinel' }]);
    await expectConfined([{ name: 'pre/sub/', type: 'directory' }]);
    expect((await lstat(join(root, outside, 'sub'))).isDirectory()).toBe(true);
    await expectConfined([{ name: 'pre/.wh..wh..opq' }]);
    expect(await readFile(join(outside, 'sentinel'), 'utf8')).toBe('do not touch');
  });

  it('refuses hardlinks that climb out; re-roots absolute ones', async () => {
    await expectUnsafe([{ name: 'hl', type: 'link', linkname: '../../outside/etc/passwd' }], 'hl');
    // Re-rooted, these name paths below the root that do not exist.
    for (const entries of [
      [{ name: 'hl', type: 'link', linkname: join(outside, 'etc/passwd') }],
      [
        { name: 'esc', type: 'symlink', linkname: join(outside, 'etc') },
        { name: 'hl', type: 'link', linkname: 'esc/passwd' },
      ],
    ] as TarEntry[][]) {
      const err = await applyLayer(Readable.from([await buildTar(entries)]), root).catch(
        (e: unknown) => e,
      );
      expect((err as LayerError).code).toBe('LAYER_INVALID');
      expect((err as LayerError).entry).toBe('hl');
      await expect(lstat(join(root, 'hl'))).rejects.toThrow();
    }
    // When the re-rooted target exists, the link is to it, never to the host's file.
    await mkdir(join(root, outside, 'etc'), { recursive: true });
    await writeFile(join(root, outside, 'etc/passwd'), 'inside');
    await expectConfined([{ name: 'hl', type: 'link', linkname: 'esc/passwd' }]);
    expect((await lstat(join(root, 'hl'))).ino).toBe(
      (await lstat(join(root, outside, 'etc/passwd'))).ino,
    );
  });

  it('never deletes outside through a whiteout', async () => {
    await expectConfined([
      { name: 'w', type: 'symlink', linkname: outside },
      { name: 'w/.wh.sentinel' },
    ]);
    await expectUnsafe([{ name: '.wh...' }], '.wh...');
    await expectUnsafe([{ name: '../.wh.sentinel' }], '../.wh.sentinel');
  });

  it('applies what real-world images hold: `/` and `./` entries, absolute symlinks on the way', async () => {
    const rootMode = (await lstat(root)).mode;
    await expectConfined([
      { name: '/', type: 'directory', mode: 0o700 },
      { name: './', type: 'directory', mode: 0o700 },
      { name: './usr/', type: 'directory' },
      { name: './usr/lib/', type: 'directory' },
      { name: '/usr/bin/', type: 'directory' },
      { name: './lib', type: 'symlink', linkname: '/usr/lib' },
      { name: './bin', type: 'symlink', linkname: '/usr/bin' },
      { name: './lib/libc.so', content: 'elf' },
      { name: '/bin/sh', content: 'sh' },
      { name: 'usr/lib/../lib/ld.so', content: 'ld' },
      { name: './bin/sh-link', type: 'link', linkname: '/bin/sh' },
    ]);
    // The root itself keeps its own metadata.
    expect((await lstat(root)).mode).toBe(rootMode);
    expect(await readFile(join(root, 'usr/lib/libc.so'), 'utf8')).toBe('elf');
    expect(await readFile(join(root, 'usr/lib/ld.so'), 'utf8')).toBe('ld');
    expect(await readFile(join(root, 'usr/bin/sh'), 'utf8')).toBe('sh');
    expect((await lstat(join(root, 'lib'))).isSymbolicLink()).toBe(true);
    expect((await lstat(join(root, 'usr/bin/sh-link'))).ino).toBe(
      (await lstat(join(root, 'usr/bin/sh'))).ino,
    );
  });

  it('takes `.wh.` names as plain files when whiteouts are off (ADD, local export)', async () => {
    await writeFile(join(root, 'victim'), 'kept');
    const data = await buildTar([
      { name: '.wh.victim', content: 'a' },
      { name: 'd/.wh..wh..opq', content: 'b' },
      { name: '../escape', content: 'c' },
    ]);
    const err = await applyTar(Readable.from([data]), root, { whiteouts: false }).catch(
      (e: unknown) => e,
    );
    expect((err as LayerError).code).toBe('LAYER_UNSAFE');
    expect((err as LayerError).entry).toBe('../escape');
    expect(await readFile(join(root, 'victim'), 'utf8')).toBe('kept');
    expect(await readFile(join(root, '.wh.victim'), 'utf8')).toBe('a');
    expect(await readFile(join(root, 'd/.wh..wh..opq'), 'utf8')).toBe('b');
    expect(await snapshotTree(outside)).toEqual(outsideBefore);
  });

  it('rejects device files unless allowed', async () => {
    await expectUnsafe(
      [{ name: 'null', type: 'character-device', devmajor: 1, devminor: 3 }],
      'null',
    );
    await expectUnsafe([{ name: 'sda', type: 'block-device', devmajor: 8, devminor: 0 }], 'sda');
    const data = await buildTar([
      { name: 'null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
    ]);
    await applyLayer(Readable.from([data]), root, { allowDevices: true });
    const st = await lstat(join(root, 'null'));
    expect(st.isCharacterDevice()).toBe(true);
    expect(st.rdev).toBe(0x103);
  });

  it('replaces an entry that is a symlink to outside instead of writing through it', async () => {
    const data = await buildTar([
      { name: 'evil', type: 'symlink', linkname: join(outside, 'sentinel') },
      { name: 'evil', content: 'replaced' },
    ]);
    await applyLayer(Readable.from([data]), root);
    expect((await lstat(join(root, 'evil'))).isFile()).toBe(true);
    expect(await readFile(join(root, 'evil'), 'utf8')).toBe('replaced');
    expect(await snapshotTree(outside)).toEqual(outsideBefore);
  });

  it('follows symlinks that stay inside the root', async () => {
    const data = await buildTar([
      { name: 'usr/', type: 'directory' },
      { name: 'usr/lib/', type: 'directory' },
      { name: 'lib', type: 'symlink', linkname: 'usr/lib' },
      { name: 'lib/libc.so', content: 'elf' },
      { name: 'usr/bin/', type: 'directory' },
      { name: 'usr/bin/up', type: 'symlink', linkname: '../lib' },
      { name: 'usr/bin/up/via-dotdot', content: 'ok' },
      { name: 'hl', type: 'link', linkname: 'lib/libc.so' },
    ]);
    await applyLayer(Readable.from([data]), root);
    expect(await readFile(join(root, 'usr/lib/libc.so'), 'utf8')).toBe('elf');
    expect(await readFile(join(root, 'usr/lib/via-dotdot'), 'utf8')).toBe('ok');
    expect((await lstat(join(root, 'hl'))).ino).toBe(
      (await lstat(join(root, 'usr/lib/libc.so'))).ino,
    );
  });

  it('reports a malformed archive as LAYER_INVALID', async () => {
    const err = await applyLayer(Readable.from([Buffer.alloc(1024, 7)]), root).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(LayerError);
    expect((err as LayerError).code).toBe('LAYER_INVALID');
    const missing = await applyLayer(
      Readable.from([await buildTar([{ name: 'hl', type: 'link', linkname: 'nope' }])]),
      root,
    ).catch((e: unknown) => e);
    expect((missing as LayerError).code).toBe('LAYER_INVALID');
    expect((missing as LayerError).entry).toBe('hl');
  });
});
