import { lstat, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { applyLayer } from './apply-layer.js';
import type { ApplyOptions } from './apply-layer.js';
import { LayerError } from './errors.js';
import { buildTar, snapshotTree, tempDir } from './testing/tar-fixtures.js';
import type { TarEntry } from './testing/tar-fixtures.js';

describe('applyLayer against hostile layers', () => {
  let work: string;
  let root: string;
  let outside: string;
  let outsideBefore: Awaited<ReturnType<typeof snapshotTree>>;

  beforeEach(async () => {
    work = await tempDir('hostile');
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

  it('rejects absolute entries', async () => {
    const abs = join(outside, 'pwned');
    await expectUnsafe([{ name: abs, content: 'x' }], abs);
    await expectUnsafe([{ name: '/etc/x', content: 'x' }], '/etc/x');
  });

  it('rejects writing through a symlink to an absolute path outside', async () => {
    await expectUnsafe(
      [
        { name: 'a', type: 'symlink', linkname: outside },
        { name: 'a/pwned', content: 'x' },
      ],
      'a/pwned',
    );
    // The symlink itself is harmless and was created; the write through it was not.
    expect((await lstat(join(root, 'a'))).isSymbolicLink()).toBe(true);
  });

  it('rejects writing through a relative symlink that climbs out', async () => {
    await expectUnsafe(
      [
        { name: 'b', type: 'symlink', linkname: '../outside' },
        { name: 'b/pwned', content: 'x' },
      ],
      'b/pwned',
    );
    await expectUnsafe(
      [
        { name: 'd/', type: 'directory' },
        { name: 'd/up', type: 'symlink', linkname: '../../outside' },
        { name: 'd/up/pwned', content: 'x' },
      ],
      'd/up/pwned',
    );
  });

  it('rejects a symlink chain that ends outside', async () => {
    await expectUnsafe(
      [
        { name: 'd/', type: 'directory' },
        { name: 'd/l1', type: 'symlink', linkname: '../l2' },
        { name: 'l2', type: 'symlink', linkname: 'd/l3' },
        { name: 'd/l3', type: 'symlink', linkname: '../../outside/etc' },
        { name: 'd/l1/passwd', content: 'pwned' },
      ],
      'd/l1/passwd',
    );
    await expectUnsafe(
      [
        { name: 'loop1', type: 'symlink', linkname: 'loop2' },
        { name: 'loop2', type: 'symlink', linkname: 'loop1' },
        { name: 'loop1/x', content: 'x' },
      ],
      'loop1/x',
    );
  });

  it('rejects writing through a symlink that was already in the root', async () => {
    await symlink(outside, join(root, 'pre'));
    await symlink('../outside', join(root, 'pre-rel'));
    await expectUnsafe([{ name: 'pre/pwned', content: 'x' }], 'pre/pwned');
    await expectUnsafe([{ name: 'pre-rel/pwned', content: 'x' }], 'pre-rel/pwned');
    await expectUnsafe([{ name: 'pre/.wh.sentinel' }], 'pre/.wh.sentinel');
    await expectUnsafe([{ name: 'pre/.wh..wh..opq' }], 'pre/.wh..wh..opq');
    await expectUnsafe([{ name: 'pre/sub/', type: 'directory' }], 'pre/sub/');
  });

  it('rejects hardlinks to targets outside the root', async () => {
    await expectUnsafe([{ name: 'hl', type: 'link', linkname: '../../outside/etc/passwd' }], 'hl');
    await expectUnsafe([{ name: 'hl', type: 'link', linkname: join(outside, 'etc/passwd') }], 'hl');
    await expectUnsafe(
      [
        { name: 'esc', type: 'symlink', linkname: join(outside, 'etc') },
        { name: 'hl', type: 'link', linkname: 'esc/passwd' },
      ],
      'hl',
    );
    await expect(lstat(join(root, 'hl'))).rejects.toThrow();
  });

  it('rejects whiteouts that would delete outside', async () => {
    await expectUnsafe(
      [{ name: 'w', type: 'symlink', linkname: outside }, { name: 'w/.wh.sentinel' }],
      'w/.wh.sentinel',
    );
    await expectUnsafe([{ name: '.wh...' }], '.wh...');
    await expectUnsafe([{ name: '../.wh.sentinel' }], '../.wh.sentinel');
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
