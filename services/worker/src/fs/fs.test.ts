import { execFile } from 'node:child_process';
import {
  chmod,
  lchown,
  link,
  lstat,
  mkdir,
  readFile,
  readlink,
  symlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cloneTree, copyPath, resolveWildcards } from './copy-tree.js';
import { detectArchive, unpackArchive } from './archive.js';
import { FsError, FsErrorCode } from '@kiln/layers';
import {
  chmodInRoot,
  lchownInRoot,
  mkdirAll,
  removeInRoot,
  utimesInRoot,
  writeFileInRoot,
} from './ops.js';
import { resolveInRoot } from '@kiln/layers';
import { makeSandbox } from '@kiln/testing';
import type { Sandbox } from '@kiln/testing';

const exec = promisify(execFile);

let sandbox: Sandbox;
let base: string;
let root: string;

/** The sandbox holds `root/` and `outside/sentinel`: nothing may ever touch the latter. */
beforeEach(async () => {
  sandbox = await makeSandbox('fs', ['root']);
  base = sandbox.base;
  root = join(base, 'root');
});

afterEach(async () => {
  await sandbox.assertUntouched(['src']);
  sandbox.remove();
});

describe('resolveInRoot', () => {
  it('resolves plain paths and clamps .. at the root', async () => {
    await mkdir(join(root, 'a/b'), { recursive: true });
    expect(await resolveInRoot(root, '/a/b')).toBe(join(root, 'a/b'));
    expect(await resolveInRoot(root, 'a/./b/')).toBe(join(root, 'a/b'));
    expect(await resolveInRoot(root, '/../../a')).toBe(join(root, 'a'));
    expect(await resolveInRoot(root, '/')).toBe(root);
    expect(await resolveInRoot(root, '/a/missing/../b')).toBe(join(root, 'a/b'));
    expect(await resolveInRoot(root, '/missing/x')).toBe(join(root, 'missing/x'));
  });

  it('re-roots absolute symlinks and clamps relative ones that climb out', async () => {
    await mkdir(join(root, 'etc'));
    await symlink('/', join(root, 'evil'));
    await symlink('../../../..', join(root, 'up'));
    await symlink('/etc', join(root, 'abs-etc'));
    await mkdir(join(root, 'd'));
    await symlink('../etc', join(root, 'd/rel'));
    expect(await resolveInRoot(root, '/evil')).toBe(root);
    expect(await resolveInRoot(root, '/evil/outside/sentinel')).toBe(
      join(root, 'outside/sentinel'),
    );
    expect(await resolveInRoot(root, '/up/outside')).toBe(join(root, 'outside'));
    expect(await resolveInRoot(root, '/abs-etc/passwd')).toBe(join(root, 'etc/passwd'));
    expect(await resolveInRoot(root, '/d/rel')).toBe(join(root, 'etc'));
    expect(await resolveInRoot(root, '/d/rel', { followFinal: false })).toBe(join(root, 'd/rel'));
    expect(await resolveInRoot(root, '/evil/d/rel', { followFinal: false })).toBe(
      join(root, 'd/rel'),
    );
  });

  it('follows chains and fails on loops with a typed error', async () => {
    await symlink('b', join(root, 'a'));
    await symlink('c', join(root, 'b'));
    await symlink('/target', join(root, 'c'));
    expect(await resolveInRoot(root, 'a')).toBe(join(root, 'target'));
    await symlink('loop2', join(root, 'loop1'));
    await symlink('loop1', join(root, 'loop2'));
    const err = await resolveInRoot(root, '/loop1/x').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FsError);
    expect((err as FsError).code).toBe(FsErrorCode.SymlinkLoop);
    await symlink('self/x', join(root, 'self'));
    await expect(resolveInRoot(root, 'self')).rejects.toMatchObject({
      code: FsErrorCode.SymlinkLoop,
    });
  });
});

describe('root-confined operations', () => {
  it('mkdirAll through escaping symlinks creates inside the root', async () => {
    await symlink('/', join(root, 'evil'));
    await symlink('../../outside', join(root, 'rel'));
    await mkdirAll(root, '/evil/outside/new', { mode: 0o750 });
    await mkdirAll(root, '/rel/new2', { mode: 0o700, owner: { uid: 12, gid: 34 } });
    expect((await lstat(join(root, 'outside/new'))).mode & 0o7777).toBe(0o750);
    const st = await lstat(join(root, 'outside/new2'));
    expect([st.uid, st.gid, st.mode & 0o777]).toEqual([12, 34, 0o700]);
  });

  it('writes a file through a symlinked directory inside the root', async () => {
    await symlink('/', join(root, 'evil'));
    await mkdir(join(root, 'outside'));
    await writeFileInRoot(root, '/evil/outside/sentinel', Buffer.from('inside'), { mode: 0o640 });
    expect(await readFile(join(root, 'outside/sentinel'), 'utf8')).toBe('inside');
    expect((await lstat(join(root, 'outside/sentinel'))).mode & 0o777).toBe(0o640);
    // A final symlink pointing out is re-rooted too.
    await symlink(join(base, 'outside', 'sentinel'), join(root, 'link'));
    await mkdir(join(root, base, 'outside'), { recursive: true });
    await writeFileInRoot(root, '/link', Buffer.from('x'), { mode: 0o644 });
    expect(await readFile(join(root, base, 'outside', 'sentinel'), 'utf8')).toBe('x');
  });

  it('removes a symlink itself, never its target', async () => {
    await symlink(join(base, 'outside'), join(root, 'out'));
    await removeInRoot(root, '/out', false);
    await expect(lstat(join(root, 'out'))).rejects.toThrow();
    await expect(removeInRoot(root, '/missing', false)).rejects.toMatchObject({
      code: FsErrorCode.NotFound,
    });
    await removeInRoot(root, '/missing', true);
    await expect(removeInRoot(root, '/', true)).rejects.toMatchObject({ code: FsErrorCode.Unsafe });
    await symlink('/', join(root, 'evil'));
    await expect(removeInRoot(root, '/evil/..', true)).rejects.toMatchObject({
      code: FsErrorCode.Unsafe,
    });
    expect((await lstat(join(root, 'evil'))).isSymbolicLink()).toBe(true);
  });
});

describe('metadata operations', () => {
  it('change the link itself or its in-root target, never anything outside', async () => {
    const t = new Date('2019-05-06T07:08:09Z');
    await writeFile(join(root, 'f'), '');
    await symlink('/f', join(root, 'lf'));
    await symlink(join(base, 'outside', 'sentinel'), join(root, 'out'));
    await lchownInRoot(root, '/lf', { uid: 3, gid: 4 });
    await utimesInRoot(root, '/lf', t, t);
    const lf = await lstat(join(root, 'lf'));
    expect([lf.uid, lf.gid, lf.mtime.getTime()]).toEqual([3, 4, t.getTime()]);
    expect((await lstat(join(root, 'f'))).uid).toBe(0);
    await lchownInRoot(root, '/lf', { uid: 5, gid: 6 }, { followFinal: true });
    await utimesInRoot(root, '/lf', t, t, { followFinal: true });
    await chmodInRoot(root, '/lf', 0o4700);
    expect(await meta(join(root, 'f'))).toEqual([0o4700, 5, 6, t.getTime()]);
    // `out` names a host file: followed inside the root it does not exist.
    for (const op of [
      () => chmodInRoot(root, '/out', 0o777),
      () => lchownInRoot(root, '/out', { uid: 1, gid: 1 }, { followFinal: true }),
      () => utimesInRoot(root, '/out', t, t, { followFinal: true }),
    ]) {
      await expect(op()).rejects.toMatchObject({ code: FsErrorCode.NotFound });
    }
    const sentinel = await lstat(join(base, 'outside', 'sentinel'));
    expect(sentinel.mode & 0o777).not.toBe(0o777);
    expect(sentinel.mtime.getTime()).not.toBe(t.getTime());
  });
});

async function meta(p: string): Promise<[number, number, number, number]> {
  const st = await lstat(p);
  return [st.mode & 0o7777, st.uid, st.gid, st.mtime.getTime()];
}

describe('copyPath', () => {
  it('preserves modes, owners, times, symlinks and hardlinks', async () => {
    const src = join(base, 'src');
    await mkdir(join(src, 'dir/sub'), { recursive: true });
    await writeFile(join(src, 'dir/a'), 'A');
    await lchown(join(src, 'dir/a'), 1000, 1001);
    await chmod(join(src, 'dir/a'), 0o4751);
    await link(join(src, 'dir/a'), join(src, 'dir/sub/hard'));
    await symlink('../a', join(src, 'dir/sub/sym'));
    await symlink('/nowhere', join(src, 'dir/dangling'));
    await chmod(join(src, 'dir/sub'), 0o711);
    const t = new Date('2020-01-02T03:04:05Z');
    await utimes(join(src, 'dir/sub'), t, t);
    await utimes(join(src, 'dir/a'), t, t);
    await copyPath(src, '/dir', root, '/out');
    const a = await lstat(join(root, 'out/a'));
    expect([a.mode & 0o7777, a.uid, a.gid, a.mtime.getTime()]).toEqual([
      0o4751,
      1000,
      1001,
      t.getTime(),
    ]);
    const hard = await lstat(join(root, 'out/sub/hard'));
    expect(hard.ino).toBe(a.ino);
    expect(hard.nlink).toBe(2);
    expect(await readlink(join(root, 'out/sub/sym'))).toBe('../a');
    expect(await readlink(join(root, 'out/dangling'))).toBe('/nowhere');
    const sub = await lstat(join(root, 'out/sub'));
    expect([sub.mode & 0o7777, sub.mtime.getTime()]).toEqual([0o711, t.getTime()]);
  });

  it("cloneTree copies the root directory's own metadata too", async () => {
    const src = join(base, 'src');
    await mkdir(join(src, 'd'), { recursive: true });
    await writeFile(join(src, 'd/f'), 'f');
    await lchown(src, 5, 6);
    await chmod(src, 0o711);
    const t = new Date('2018-01-01T00:00:00Z');
    await utimes(src, t, t);
    await cloneTree(src, root);
    expect(await meta(root)).toEqual([0o711, 5, 6, t.getTime()]);
    expect(await readFile(join(root, 'd/f'), 'utf8')).toBe('f');
  });

  it('copies devices and fifos', async () => {
    const src = join(base, 'src');
    await mkdir(src);
    await exec('mknod', [join(src, 'null'), 'c', '1', '3']);
    await exec('mkfifo', [join(src, 'fifo')]);
    await copyPath(src, '/', root, '/dev/', { copyDirContents: true });
    const dev = await lstat(join(root, 'dev/null'));
    expect([dev.isCharacterDevice(), dev.rdev]).toEqual([
      true,
      (await lstat(join(src, 'null'))).rdev,
    ]);
    expect((await lstat(join(root, 'dev/fifo'))).isFIFO()).toBe(true);
  });

  it('never writes through a symlink in the destination tree', async () => {
    const src = join(base, 'src');
    await mkdir(join(src, 'outside'), { recursive: true });
    await writeFile(join(src, 'outside/sentinel'), 'overwrite');
    await writeFile(join(src, 'outside/new'), 'new');
    // The destination holds `evil -> /..` and `outside -> <host outside dir>`.
    await symlink('/..', join(root, 'evil'));
    await mkdir(join(root, 'd'));
    await symlink(join(base, 'outside'), join(root, 'd/outside'));
    await copyPath(src, '/outside', root, '/evil/outside/');
    expect(await readFile(join(root, 'outside/outside/sentinel'), 'utf8')).toBe('overwrite');
    // Copying a directory onto an existing symlink (not a dir) fails instead of following it.
    await expect(copyPath(src, '/', root, '/d', { copyDirContents: true })).rejects.toMatchObject({
      code: FsErrorCode.Conflict,
    });
    // A destination that is a symlink is followed as in a chroot: the host path it names is
    // re-rooted, so the file lands below the root.
    await copyPath(src, '/outside/new', root, '/d/outside');
    expect(await readFile(join(root, base, 'outside'), 'utf8')).toBe('new');
    expect((await lstat(join(root, 'd/outside'))).isSymbolicLink()).toBe(true);
    // Inside a copied tree, an existing symlink in the way of a file is replaced, not written through.
    await mkdir(join(root, 'e'));
    await symlink(join(base, 'outside', 'sentinel'), join(root, 'e/sentinel'));
    await copyPath(src, '/outside', root, '/e', { copyDirContents: true });
    expect(await readFile(join(root, 'e/sentinel'), 'utf8')).toBe('overwrite');
    expect((await lstat(join(root, 'e/sentinel'))).isFile()).toBe(true);
  });

  it('resolves wildcards inside the root', async () => {
    await mkdir(join(root, 'x/y'), { recursive: true });
    await writeFile(join(root, 'x/a.txt'), '');
    await writeFile(join(root, 'x/b.txt'), '');
    await writeFile(join(root, 'x/y/c.txt'), '');
    await symlink('/', join(root, 'evil'));
    expect(await resolveWildcards(root, '/x/*.txt', false)).toEqual(['/x/a.txt', '/x/b.txt']);
    expect(await resolveWildcards(root, '/x/*/*.txt', false)).toEqual(['/x/y/c.txt']);
    expect(await resolveWildcards(root, '/evil/x/?.txt', true)).toEqual(['/x/a.txt', '/x/b.txt']);
    expect(await resolveWildcards(root, '/x/*.none', false)).toEqual([]);
    expect(await resolveWildcards(root, '/x/a.txt', false)).toEqual(['/x/a.txt']);
  });
});

describe('archives', () => {
  it('detects tar, tar.gz, tar.bz2, tar.xz by content and rejects other files', async () => {
    const src = join(base, 'src');
    await mkdir(join(src, 'content'), { recursive: true });
    await writeFile(join(src, 'content/f'), 'hello');
    await exec('tar', ['-C', src, '-cf', join(src, 'a.tar'), 'content']);
    await exec('tar', ['-C', src, '-czf', join(src, 'a.tgz'), 'content']);
    await exec('tar', ['-C', src, '-cjf', join(src, 'a.tbz'), 'content']);
    await exec('tar', ['-C', src, '-cJf', join(src, 'a.txz'), 'content']);
    await exec('tar', ['-C', src, '--zstd', '-cf', join(src, 'a.tzst'), 'content']);
    await writeFile(join(src, 'plain.gz'), Buffer.from([0x1f, 0x8b, 0x08, 0, 1, 2, 3]));
    expect(await detectArchive(join(src, 'a.tar'))).toBe('none');
    expect(await detectArchive(join(src, 'a.tgz'))).toBe('gzip');
    expect(await detectArchive(join(src, 'a.tbz'))).toBe('bzip2');
    expect(await detectArchive(join(src, 'a.txz'))).toBe('xz');
    expect(await detectArchive(join(src, 'a.tzst'))).toBe('zstd');
    expect(await detectArchive(join(src, 'content/f'))).toBeUndefined();
    expect(await detectArchive(join(src, 'plain.gz'))).toBeUndefined();
    expect(await detectArchive(join(src, 'content'))).toBeUndefined();
    // Without the xz command an .xz archive is an error, not silently a plain file.
    const path = process.env.PATH;
    process.env.PATH = join(base, 'no-such-bin');
    try {
      await expect(detectArchive(join(src, 'a.txz'))).rejects.toMatchObject({
        code: FsErrorCode.BadArchive,
      });
    } finally {
      process.env.PATH = path;
    }
    for (const f of ['a.tar', 'a.tgz', 'a.tbz', 'a.txz', 'a.tzst']) {
      const dest = join(root, f);
      await mkdir(dest);
      await unpackArchive(join(src, f), (await detectArchive(join(src, f)))!, dest);
      expect(await readFile(join(dest, 'content/f'), 'utf8')).toBe('hello');
    }
  });
});
