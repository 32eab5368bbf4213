/**
 * The parallel tree copy on many entries (more than {@link COPY_CONCURRENCY}, so that entries are
 * copied while others wait): the tree it makes is the one GNU `cp -a` makes (owners, modes, times,
 * symlinks, hardlinks), attributes as the source's, and a hostile destination is never written
 * through. Runs as root (owners are set).
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmod,
  lchown,
  link,
  lstat,
  lutimes,
  mkdir,
  readFile,
  readdir,
  readlink,
  realpath,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { COPY_CONCURRENCY, copyPath } from './copy-tree.js';
import { FsErrorCode, readTreeXattrs } from '@kiln/layers';
import { CAPABILITY, hexXattrs, makeTempDir, setx } from '@kiln/testing';

const exec = promisify(execFile);

let tmp: ReturnType<typeof makeTempDir>;
let base: string;
beforeEach(async () => {
  tmp = makeTempDir('copy-tree');
  base = await realpath(tmp.dir);
});
afterEach(() => tmp.remove());

const FILE_MODES = [0o644, 0o755, 0o600, 0o000, 0o4755, 0o2711, 0o1644, 0o6750];
const DIR_MODES = [0o755, 0o700, 0o1777, 0o2775, 0o511];
const OWNERS = [
  [0, 0],
  [1000, 1000],
  [0, 1234],
  [4321, 0],
];

/**
 * A source tree of `dirs` x `files` entries: every mode and owner above, symlinks (relative,
 * absolute, dangling, to a directory), hardlink groups spread across directories, nested
 * directories, attributes, fixed times (set last, deepest first).
 */
async function makeTree(src: string, dirs: number, files: number): Promise<void> {
  const t = (i: number): Date => new Date(Date.UTC(2020, 0, 1) + i * 1000);
  const timed: [string, Date][] = [];
  await mkdir(src);
  for (let d = 0; d < dirs; d++) {
    const dir = join(src, `d${d}`, d % 2 === 0 ? 'nested' : '');
    await mkdir(dir, { recursive: true });
    for (let f = 0; f < files; f++) {
      const i = d * files + f;
      const p = join(dir, `f${f}`);
      if (f % 17 === 5) {
        await symlink(['../x', '/abs/target', `f${f - 1}`, '.'][i % 4]!, p);
      } else if (f % 13 === 7 && d > 0) {
        await link(join(src, `d${d - 1}`, d % 2 === 1 ? 'nested' : '', 'f3'), p);
        continue; // shares f3's inode (and metadata) in the previous directory
      } else {
        await writeFile(p, `content ${i}\n`.repeat(i % 5));
        await chmod(p, FILE_MODES[i % FILE_MODES.length]!);
      }
      const [uid, gid] = OWNERS[i % OWNERS.length]!;
      await lchown(p, uid!, gid!);
      if (i % 11 === 0) await setx(p, 'trusted.n', Buffer.from(`v${i}`));
      if (i % 23 === 0 && f % 17 !== 5) await setx(p, 'security.capability', CAPABILITY);
      timed.push([p, t(i)]);
    }
    await chmod(dir, DIR_MODES[d % DIR_MODES.length]!);
    await lchown(dir, ...(OWNERS[d % OWNERS.length] as [number, number]));
    timed.push([dir, t(10_000 + d)]);
    if (d % 2 === 0) timed.push([join(src, `d${d}`), t(20_000 + d)]);
  }
  for (const [p, time] of timed) await lutimes(p, time, time);
}

/** Every entry below `root` as comparable data: type, mode, owner, mtime, content, link target. */
async function describeTree(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const inodes = new Map<number, string>();
  const walk = async (dir: string, rel: string): Promise<void> => {
    for (const name of (await readdir(dir)).sort()) {
      const p = join(dir, name);
      const r = rel === '' ? name : `${rel}/${name}`;
      const st = await lstat(p);
      let what = '';
      if (st.isSymbolicLink()) what = `-> ${await readlink(p)}`;
      else if (st.isFile()) {
        const first = inodes.get(st.ino);
        if (first === undefined) inodes.set(st.ino, r);
        const sum = createHash('sha256')
          .update(await readFile(p))
          .digest('hex');
        what = `file ${sum.slice(0, 12)} links ${st.nlink} first ${first ?? r}`;
      } else if (st.isDirectory()) {
        what = 'dir';
        await walk(p, r);
      }
      const mode = st.isSymbolicLink() ? 0 : st.mode & 0o7777;
      out[r] = `${what} mode ${mode.toString(8)} owner ${st.uid}:${st.gid} mtime ${st.mtimeMs}`;
    }
  };
  await walk(root, '');
  return out;
}

describe('copyPath on many entries', () => {
  it('makes the tree cp -a makes: owners, odd modes, times, symlinks, hardlinks; attributes kept', async () => {
    const src = join(base, 'src');
    await makeTree(src, 12, 40);
    expect(12 * 40).toBeGreaterThan(4 * COPY_CONCURRENCY);
    const dst = join(base, 'dst');
    await mkdir(dst);
    await copyPath(base, '/src', dst, '/out');
    await exec('cp', ['-a', src, join(base, 'reference')]);
    const want = await describeTree(join(base, 'reference'));
    expect(Object.keys(want).length).toBeGreaterThan(12 * 40);
    expect(await describeTree(join(dst, 'out'))).toEqual(want);
    expect(hexXattrs(await readTreeXattrs(join(dst, 'out')))).toEqual(
      hexXattrs(await readTreeXattrs(src)),
    );
  });

  it('sets the wanted group in a setgid destination, and applies owner and mode overrides', async () => {
    const src = join(base, 'src');
    await makeTree(src, 4, 40);
    const dst = join(base, 'dst');
    await mkdir(join(dst, 'sg'), { recursive: true });
    await lchown(join(dst, 'sg'), 0, 4242);
    await chmod(join(dst, 'sg'), 0o2775); // entries made in it get group 4242 unless chowned
    await copyPath(base, '/src', dst, '/sg/', { copyDirContents: true });
    await exec('cp', ['-a', `${src}/.`, join(base, 'reference')]);
    const want = await describeTree(join(base, 'reference'));
    expect(Object.values(want).some((v) => v.includes('owner 0:0'))).toBe(true);
    expect(await describeTree(join(dst, 'sg'))).toEqual(want);

    await copyPath(base, '/src', dst, '/over', { owner: { uid: 7, gid: 8 }, mode: 0o640 });
    const over = await describeTree(join(dst, 'over'));
    for (const [rel, v] of Object.entries(over)) {
      expect(v, rel).toContain('owner 7:8');
      if (!v.startsWith('->')) expect(v, rel).toContain('mode 640 ');
    }
    expect(Object.keys(over)).toEqual(Object.keys(want));
  });

  it('never writes through hostile symlinks in the destination, nor past a directory that is one', async () => {
    const src = join(base, 'src');
    await makeTree(src, 4, 40);
    const outside = join(base, 'outside');
    await mkdir(outside);
    await writeFile(join(outside, 'sentinel'), 'keep');
    const dst = join(base, 'dst');
    // Every name of d1/ (files, symlinks, hardlinks) is already a symlink to the outside file.
    await mkdir(join(dst, 'out', 'd1'), { recursive: true });
    for (const name of await readdir(join(src, 'd1')))
      await symlink(join(outside, 'sentinel'), join(dst, 'out', 'd1', name));
    await copyPath(base, '/src', dst, '/out', { copyDirContents: true });
    expect(await readFile(join(outside, 'sentinel'), 'utf8')).toBe('keep');
    expect(await describeTree(join(dst, 'out', 'd1'))).toEqual(await describeTree(join(src, 'd1')));

    // A directory of the source meets a symlink to an outside directory: the copy fails and
    // nothing lands outside.
    await mkdir(join(dst, 'again'));
    await symlink(outside, join(dst, 'again', 'd2'));
    await expect(
      copyPath(base, '/src', dst, '/again', { copyDirContents: true }),
    ).rejects.toMatchObject({ code: FsErrorCode.Conflict });
    expect(await readdir(outside)).toEqual(['sentinel']);
    expect(await readFile(join(outside, 'sentinel'), 'utf8')).toBe('keep');
  });
});
