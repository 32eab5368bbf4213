/**
 * Extended attributes on the real filesystem (as root): the getfattr/setfattr bridge, and
 * FileOp copies keeping attributes as fsutil's copy does.
 */
import { execFile } from 'node:child_process';
import { lstat, mkdir, mkdtemp, realpath, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { detectArchive, unpackArchive } from './archive.js';
import { cloneTree, copyPath } from './copy-tree.js';
import { readTreeXattrs, writeXattrs, xattrTarget } from '@kiln/layers';
import { CAPABILITY, getx, hexXattrs, setx } from '@kiln/testing';

const exec = promisify(execFile);
const BINARY = Buffer.from([0xff, 0xfe, 0x00, 0x0a, 0x5c, 0x3d, 0x80]);

let base: string;
beforeEach(async () => {
  base = await realpath(await mkdtemp(join(tmpdir(), 'kiln-xattr-')));
});
afterEach(async () => {
  await rm(base, { recursive: true, force: true });
});

/** src/ with attributes on the dir itself, a file, a nested dir, a symlink; odd names. */
async function makeSource(): Promise<string> {
  const src = join(base, 'src');
  await mkdir(join(src, 'sub'), { recursive: true });
  await writeFile(join(src, 'tool'), 'bin');
  await writeFile(join(src, 'plain'), 'none');
  await writeFile(join(src, 'sub', 'we ird\\na=me\n\tx'), 'odd');
  await symlink('tool', join(src, 'link'));
  await setx(src, 'user.root', Buffer.from('r'));
  await setx(join(src, 'tool'), 'security.capability', CAPABILITY);
  await setx(join(src, 'tool'), 'user.bin', BINARY);
  await setx(join(src, 'sub'), 'user.sub', Buffer.from('s'));
  await setx(join(src, 'sub', 'we ird\\na=me\n\tx'), 'user.odd name=x', Buffer.from('o'));
  await setx(join(src, 'link'), 'trusted.l', Buffer.from('l'));
  await setx(join(src, 'plain'), 'trusted.overlay.opaque', Buffer.from('y'));
  return src;
}

const SOURCE_XATTRS = {
  '': { 'user.root': Buffer.from('r').toString('hex') },
  tool: { 'security.capability': CAPABILITY.toString('hex'), 'user.bin': BINARY.toString('hex') },
  sub: { 'user.sub': Buffer.from('s').toString('hex') },
  'sub/we ird\\na=me\n\tx': { 'user.odd name=x': Buffer.from('o').toString('hex') },
  link: { 'trusted.l': Buffer.from('l').toString('hex') },
};

/** Every attribute below `root`, as plain data for deep equality. */
const dump = async (root: string) => hexXattrs(await readTreeXattrs(root));

describe('readTreeXattrs / writeXattrs', () => {
  it('reads a tree in one getfattr: raw values, odd names, symlinks not followed, overlay markers left out', async () => {
    const src = await makeSource();
    expect(await dump(src)).toEqual(SOURCE_XATTRS);
    expect(await dump(join(src, 'tool'))).toEqual({ '': SOURCE_XATTRS.tool });
    expect(await dump(join(src, 'plain'))).toEqual({});
  });

  it('writes a batch with lsetxattr and skips a path that is no longer its inode', async () => {
    const dir = join(base, 'w');
    await mkdir(dir);
    await writeFile(join(dir, 'f'), 'f');
    await writeFile(join(dir, 'target'), 't');
    await symlink('target', join(dir, 'l'));
    await writeFile(join(dir, 'replaced'), 'old');
    await mkdir(join(dir, 'sub'));
    await writeFile(join(dir, 'sub', 'g'), 'g');
    await mkdir(join(base, 'elsewhere'));
    await writeFile(join(base, 'elsewhere', 'g'), 'g');
    const v = new Map([['user.v', BINARY]]);
    const targets = [
      await xattrTarget(join(dir, 'f'), v),
      await xattrTarget(join(dir, 'l'), new Map([['trusted.t', BINARY]])),
      await xattrTarget(join(dir, 'replaced'), v),
      await xattrTarget(join(dir, 'sub', 'g'), v),
    ];
    // The old inode stays alive (moved away), so the new file cannot reuse its number.
    await rename(join(dir, 'replaced'), join(dir, 'moved'));
    await writeFile(join(dir, 'replaced'), 'new');
    // A symlink swapped in on the way.
    await rename(join(dir, 'sub'), join(dir, 'sub-moved'));
    await symlink(join(base, 'elsewhere'), join(dir, 'sub'));
    const res = await writeXattrs(targets);
    expect(res).toEqual({ skipped: [join(dir, 'replaced'), join(dir, 'sub', 'g')], errors: [] });
    expect(await getx(join(dir, 'f'), 'user.v')).toEqual(BINARY);
    expect(await getx(join(dir, 'l'), 'trusted.t')).toEqual(BINARY);
    expect(await getx(join(dir, 'target'), 'trusted.t')).toBeUndefined();
    expect(await getx(join(dir, 'replaced'), 'user.v')).toBeUndefined();
    expect(await getx(join(dir, 'moved'), 'user.v')).toBeUndefined();
    expect(await getx(join(base, 'elsewhere', 'g'), 'user.v')).toBeUndefined();
  });
});

describe('copies keep extended attributes', () => {
  it('copyPath of a tree keeps every attribute byte-exact, capabilities even with an owner override', async () => {
    await makeSource();
    const dst = join(base, 'dst');
    await mkdir(dst);
    await copyPath(base, '/src', dst, '/out', { owner: { uid: 1000, gid: 1000 } });
    const out = join(dst, 'out');
    expect((await lstat(join(out, 'tool'))).uid).toBe(1000);
    // chown clears security.capability: it must have been set after.
    expect(await getx(join(out, 'tool'), 'security.capability')).toEqual(CAPABILITY);
    expect(await dump(out)).toEqual(SOURCE_XATTRS);
  });

  it('copies a single file and only the included entries', async () => {
    const src = await makeSource();
    const dst = join(base, 'dst');
    await mkdir(dst);
    await copyPath(src, '/tool', dst, '/bin/tool2');
    expect(await getx(join(dst, 'bin/tool2'), 'user.bin')).toEqual(BINARY);
    await copyPath(src, '/', dst, '/inc/', { includePatterns: ['sub'], copyDirContents: true });
    expect(await dump(join(dst, 'inc'))).toEqual({
      sub: SOURCE_XATTRS.sub,
      'sub/we ird\\na=me\n\tx': SOURCE_XATTRS['sub/we ird\\na=me\n\tx'],
    });
  });

  it('cloneTree (the copying snapshotter) keeps them', async () => {
    const src = await makeSource();
    const dst = join(base, 'clone');
    await mkdir(dst);
    await cloneTree(src, dst);
    const { '': _root, ...children } = SOURCE_XATTRS;
    expect(await dump(dst)).toEqual(children);
  });
});

describe('ADD unpacking keeps extended attributes', () => {
  it('sets the SCHILY.xattr.* records of a GNU tar (gzip) archive byte-exact', async () => {
    const src = await makeSource();
    const archive = join(base, 'a.tar.gz');
    await exec('tar', [
      '--xattrs',
      '--xattrs-include=*',
      '--format=posix',
      '-czf',
      archive,
      '-C',
      src,
      '.',
    ]);
    const dest = join(base, 'unpacked');
    await mkdir(dest);
    await unpackArchive(archive, (await detectArchive(archive))!, dest, {
      owner: { uid: 1000, gid: 1000 },
    });
    expect((await lstat(join(dest, 'tool'))).uid).toBe(1000);
    // The destination itself keeps its own metadata, as for any archive. GNU tar writes `=` in
    // a name as `%3D`, its own convention: read literally, as Go's archive/tar does.
    const { '': _root, 'sub/we ird\\na=me\n\tx': _odd, ...children } = SOURCE_XATTRS;
    expect(await dump(dest)).toEqual({
      ...children,
      'sub/we ird\\na=me\n\tx': { 'user.odd name%3Dx': Buffer.from('o').toString('hex') },
    });
  });
});
