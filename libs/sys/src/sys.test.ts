import { closeSync, lstatSync, openSync, readFileSync, writeSync } from 'node:fs';
import { connect } from 'node:net';
import {
  chmod,
  chown,
  link,
  lstat,
  mkdir,
  mkdtemp,
  readFile,
  readlink,
  rm,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  COPY_OTHER,
  MNT,
  MS,
  copyFiles,
  dup2,
  lsetxattr,
  lstatDir,
  lxattrs,
  mknod,
  mount,
  recvFds,
  spawnProcess,
  treeXattrs,
  umount2,
  unixAccept,
  unixListen,
} from './index.js';
import type { SpawnedProcess } from './index.js';

/** The error `fn` throws (a test fails when it does not throw). */
function thrown(fn: () => unknown): NodeJS.ErrnoException {
  try {
    fn();
  } catch (err) {
    return err as NodeJS.ErrnoException;
  }
  throw new Error('expected a throw');
}

const mounted = (target: string): boolean =>
  lstatSync(target).dev !== lstatSync(join(target, '..')).dev;

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kiln-sys-'));
  // A tmpfs of its own: xattrs (trusted.* as root, user.*) work on it whatever the host disk is.
  await mkdir(join(dir, 'fs'));
  await mount('tmpfs', join(dir, 'fs'), 'tmpfs', 0, 'size=16m');
});
afterAll(async () => {
  await umount2(join(dir, 'fs'), MNT.DETACH).catch(() => undefined);
  await rm(dir, { recursive: true, force: true });
});

describe('mount / umount2', () => {
  it('mounts an overlay of two lower dirs and an upper one, and unmounts it', async () => {
    const root = join(dir, 'fs', 'ovl');
    for (const d of ['l1', 'l2', 'up', 'work', 'merged'])
      await mkdir(join(root, d), { recursive: true });
    await writeFile(join(root, 'l1', 'a'), 'from l1');
    await writeFile(join(root, 'l2', 'a'), 'from l2');
    await writeFile(join(root, 'l2', 'b'), 'only l2');
    const merged = join(root, 'merged');
    await mount(
      'overlay',
      merged,
      'overlay',
      0,
      `lowerdir=${join(root, 'l1')}:${join(root, 'l2')},upperdir=${join(root, 'up')},workdir=${join(root, 'work')}`,
    );
    expect(mounted(merged)).toBe(true);
    expect(await readFile(join(merged, 'a'), 'utf8')).toBe('from l1');
    expect(await readFile(join(merged, 'b'), 'utf8')).toBe('only l2');
    await writeFile(join(merged, 'c'), 'new');
    expect(await readFile(join(root, 'up', 'c'), 'utf8')).toBe('new');
    await umount2(merged);
    expect(mounted(merged)).toBe(false);
  });

  it('makes a read-only bind with a bind and a read-only remount', async () => {
    const src = join(dir, 'fs', 'bind-src');
    const target = join(dir, 'fs', 'bind-target');
    await mkdir(src);
    await mkdir(target);
    await writeFile(join(src, 'f'), 'x');
    await mount(src, target, null, MS.BIND | MS.REC);
    await mount(null, target, null, MS.REMOUNT | MS.BIND | MS.RDONLY);
    expect(await readFile(join(target, 'f'), 'utf8')).toBe('x');
    await expect(writeFile(join(target, 'g'), 'y')).rejects.toMatchObject({ code: 'EROFS' });
    await umount2(target);
    expect(mounted(target)).toBe(false);
  });

  it('fails with Node-style errors', async () => {
    const missing = join(dir, 'no-such-dir');
    await expect(mount('tmpfs', missing, 'tmpfs', 0)).rejects.toMatchObject({
      code: 'ENOENT',
      syscall: 'mount',
      path: missing,
    });
    await expect(mount('x', join(dir, 'fs'), 'no-such-fs', 0)).rejects.toMatchObject({
      code: 'ENODEV',
    });
    await expect(umount2(join(dir))).rejects.toMatchObject({ code: 'EINVAL', syscall: 'umount2' });
  });
});

describe('extended attributes', () => {
  it('sets and reads attributes of an entry, never through a symlink', async () => {
    const f = join(dir, 'fs', 'x-file');
    await writeFile(f, '');
    await symlink('x-file', join(dir, 'fs', 'x-link'));
    lsetxattr(f, 'user.k', Buffer.from('v1'));
    lsetxattr(f, 'trusted.bin', Buffer.from([0, 1, 255]));
    const attrs = new Map(lxattrs(f));
    expect(attrs.get('user.k')?.toString()).toBe('v1');
    expect(attrs.get('trusted.bin')).toEqual(Buffer.from([0, 1, 255]));
    // The link has no attributes of its own, and user.* cannot be set on a symlink.
    expect(lxattrs(join(dir, 'fs', 'x-link'))).toEqual([]);
    expect(
      thrown(() => lsetxattr(join(dir, 'fs', 'x-link'), 'user.k', Buffer.from('v'))),
    ).toMatchObject({ code: 'EPERM' });
    expect(thrown(() => lxattrs(join(dir, 'fs', 'missing')))).toMatchObject({
      code: 'ENOENT',
      syscall: 'llistxattr',
    });
  });

  it('reads a tree: every entry with attributes, by relative path', async () => {
    const root = join(dir, 'fs', 'tree');
    await mkdir(join(root, 'a', 'b'), { recursive: true });
    await writeFile(join(root, 'a', 'b', 'f'), '');
    await writeFile(join(root, 'plain'), '');
    await symlink('/nowhere', join(root, 'a', 'link'));
    lsetxattr(root, 'user.root', Buffer.from('r'));
    lsetxattr(join(root, 'a', 'b', 'f'), 'trusted.deep', Buffer.alloc(0));
    lsetxattr(join(root, 'a', 'link'), 'trusted.onlink', Buffer.from('l'));
    const tree = new Map(
      (await treeXattrs(root)).map(([p, attrs]) => [
        p,
        Object.fromEntries(attrs.map(([n, v]) => [n, v.toString()])),
      ]),
    );
    expect(tree).toEqual(
      new Map([
        ['', { 'user.root': 'r' }],
        ['a/b/f', { 'trusted.deep': '' }],
        ['a/link', { 'trusted.onlink': 'l' }],
      ]),
    );
    await expect(treeXattrs(join(root, 'missing'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe('mknod', () => {
  it('makes a fifo and a character device', () => {
    const fifo = join(dir, 'fs', 'fifo');
    mknod(fifo, 0o010644);
    expect(lstatSync(fifo).isFIFO()).toBe(true);
    const dev = join(dir, 'fs', 'null');
    mknod(dev, 0o020666, 1, 3);
    const st = lstatSync(dev);
    expect(st.isCharacterDevice()).toBe(true);
    expect(st.rdev).toBe((1 << 8) | 3);
    expect(thrown(() => mknod(fifo, 0o010644))).toMatchObject({ code: 'EEXIST' });
  });
});

describe('spawnProcess', () => {
  const collect = async (
    p: SpawnedProcess,
  ): Promise<{ out: string; err: string; code: number | null; signal: string | null }> => {
    let out = '';
    let err = '';
    p.stdout.on('data', (c: Buffer) => (out += c.toString()));
    p.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const { code, signal } = await p.closed;
    return { out, err, code, signal };
  };

  it('runs a program found in PATH with its own stdout, stderr and exit code', async () => {
    const r = await collect(
      spawnProcess('sh', ['-c', 'echo "$GREETING"; echo oops >&2; exit 3'], {
        env: { PATH: process.env.PATH, GREETING: 'hello' },
      }),
    );
    expect(r).toEqual({ out: 'hello\n', err: 'oops\n', code: 3, signal: null });
  });

  it('gives the child a session of its own, stdin from /dev/null, no ignored or blocked signal', async () => {
    // Node ignores SIGPIPE; a child must not inherit that (as libuv's children do not).
    const r = await collect(
      spawnProcess('sh', [
        '-c',
        'grep -E "^(SigIgn|SigBlk)" /proc/self/status; ps -o sid= -p $$; echo $$; cat',
      ]),
    );
    expect(r.code).toBe(0);
    const [blk, ign, sid, pid] = r.out.trim().split('\n');
    expect(ign).toMatch(/^SigIgn:\s+0+$/);
    expect(blk).toMatch(/^SigBlk:\s+0+$/);
    expect(sid?.trim()).toBe(pid?.trim());
    expect(sid?.trim()).not.toBe(String(process.pid));
  });

  it('reports the signal that ended the process, and kill is refused after the exit', async () => {
    const p = spawnProcess('sleep', ['30']);
    expect(p.kill('SIGKILL')).toBe(true);
    const r = await collect(p);
    expect(r).toMatchObject({ code: null, signal: 'SIGKILL' });
    expect(p.kill('SIGKILL')).toBe(false);
  });

  it('fails to start a missing program with a Node-style error', () => {
    const err = thrown(() => spawnProcess(join(dir, 'no-such-program'), []));
    expect(err).toMatchObject({ code: 'ENOENT', syscall: 'posix_spawn' });
    expect(thrown(() => spawnProcess('no-such-program-in-path', []))).toMatchObject({
      code: 'ENOENT',
    });
  });

  it('rejects closed when the exec fails after the start (no format it can run)', async () => {
    const bad = join(dir, 'not-a-program');
    await writeFile(bad, Buffer.from([0, 1, 2, 3, 4, 5, 6, 7]));
    await chmod(bad, 0o755);
    const p = spawnProcess(bad, []);
    await expect(p.closed).rejects.toMatchObject({ code: 'ENOEXEC', syscall: 'posix_spawn' });
    expect(p.pid).toBeUndefined();
    expect(p.kill('SIGKILL')).toBe(false);
  });

  it('reports the pid once the process runs', async () => {
    const p = spawnProcess('sh', ['-c', 'echo $$']);
    let out = '';
    p.stdout.on('data', (c: Buffer) => (out += c.toString()));
    await p.closed;
    expect(p.pid).toBe(Number(out.trim()));
  });
});

describe('copyFiles', () => {
  it('copies plain files with their contents, mode, owner and times to the nanosecond', async () => {
    const d = await mkdtemp(join(dir, 'copy-'));
    await mkdir(join(d, 'in'));
    await mkdir(join(d, 'out'));
    const big = Buffer.alloc(3 * 1024 * 1024 + 17, 7);
    await writeFile(join(d, 'in/a'), 'hello');
    await writeFile(join(d, 'in/empty'), '');
    await writeFile(join(d, 'in/big'), big);
    await chown(join(d, 'in/a'), 1234, 5678);
    await chmod(join(d, 'in/a'), 0o4751);
    // Nanoseconds, which Date (and so utimes) cannot set: touch can.
    execFileSync('touch', ['-m', '-d', '2021-02-03 04:05:06.123456789', join(d, 'in/a')]);
    const names = ['a', 'empty', 'big'];
    const r = await copyFiles(
      names.map((n) => join(d, 'in', n)),
      names.map((n) => join(d, 'out', n)),
      { chown: true },
    );
    expect(r).toEqual([0, 0, 0]);
    const [src, dst] = await Promise.all([
      lstat(join(d, 'in/a'), { bigint: true }),
      lstat(join(d, 'out/a'), { bigint: true }),
    ]);
    expect(await readFile(join(d, 'out/a'), 'utf8')).toBe('hello');
    expect((await readFile(join(d, 'out/big'))).equals(big)).toBe(true);
    expect(await readFile(join(d, 'out/empty'), 'utf8')).toBe('');
    // Set-id bits survive the chown (mode is set after it).
    expect(dst.mode & 0o7777n).toBe(0o4751n);
    expect([dst.uid, dst.gid]).toEqual([1234n, 5678n]);
    expect(dst.mtimeNs).toBe(src.mtimeNs);
    expect(dst.mtimeNs % 1_000_000_000n).toBe(123456789n);
  });

  it('applies owner, mode and time overrides', async () => {
    const d = await mkdtemp(join(dir, 'copy-'));
    await writeFile(join(d, 'a'), 'x');
    const time = new Date('2020-01-01T00:00:01.250Z');
    const r = await copyFiles([join(d, 'a')], [join(d, 'b')], {
      chown: true,
      owner: { uid: 42, gid: 43 },
      mode: 0o600,
      time,
    });
    expect(r).toEqual([0]);
    const st = await lstat(join(d, 'b'));
    expect([st.uid, st.gid, st.mode & 0o7777]).toEqual([42, 43, 0o600]);
    expect(st.mtimeMs).toBe(time.getTime());
    expect(st.atimeMs).toBe(time.getTime());
  });

  it('leaves links, hardlinked files and special files alone, and never writes through what is in the way', async () => {
    const d = await mkdtemp(join(dir, 'copy-'));
    await mkdir(join(d, 'out'));
    await writeFile(join(d, 'f'), 'f');
    await writeFile(join(d, 'h1'), 'h');
    await link(join(d, 'h1'), join(d, 'h2'));
    await symlink('/etc/passwd', join(d, 'sym'));
    mknod(join(d, 'fifo'), 0o010600);
    await writeFile(join(d, 'victim'), 'keep');
    // Destinations in the way: a symlink to a file outside, and a file.
    await symlink(join(d, 'victim'), join(d, 'out/f'));
    await writeFile(join(d, 'out/g'), 'old');
    const r = await copyFiles(
      ['h1', 'sym', 'fifo', 'f', 'f', 'missing'].map((n) => join(d, n)),
      ['h1', 'sym', 'fifo', 'f', 'g', 'missing'].map((n) => join(d, 'out', n)),
    );
    const EEXIST = 17;
    const ENOENT = 2;
    expect(r).toEqual([COPY_OTHER, COPY_OTHER, COPY_OTHER, EEXIST, EEXIST, ENOENT]);
    expect(await readFile(join(d, 'victim'), 'utf8')).toBe('keep');
    expect(await readlink(join(d, 'out/f'))).toBe(join(d, 'victim'));
    expect(await readFile(join(d, 'out/g'), 'utf8')).toBe('old');
    for (const n of ['h1', 'sym', 'fifo', 'missing'])
      await expect(lstat(join(d, 'out', n))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('removes a copy that failed after it was made', async () => {
    const d = await mkdtemp(join(dir, 'copy-'));
    await writeFile(join(d, 'a'), Buffer.alloc(1024 * 1024, 1));
    // A destination too small for it: the copy fails (ENOSPC) after the file was created.
    await mkdir(join(d, 'small'));
    await mount('tmpfs', join(d, 'small'), 'tmpfs', 0, 'size=64k');
    try {
      const r = await copyFiles([join(d, 'a')], [join(d, 'small/b')]);
      expect(r).toEqual([28]); // ENOSPC
      await expect(lstat(join(d, 'small/b'))).rejects.toMatchObject({ code: 'ENOENT' });
    } finally {
      await umount2(join(d, 'small'), MNT.DETACH);
    }
  });
});

describe('unix sockets', () => {
  it("accepts a connection with its peer's credentials, or answers none after the timeout", async () => {
    const path = join(dir, 'l.sock');
    const fd = unixListen(path);
    try {
      expect(lstatSync(path).isSocket()).toBe(true);
      expect(unixAccept(fd, 10, 100)).toBeUndefined();
      // A unix connect completes in the kernel (the backlog) before the accept.
      const client = connect(path);
      const conn = unixAccept(fd, 5_000, 1_000);
      expect(conn).toMatchObject({ uid: process.geteuid!(), pid: process.pid });
      await new Promise<void>((r) => client.end('hello', () => r()));
      const got = recvFds(conn!.fd, 64, 3);
      expect(got.data.toString()).toBe('hello');
      expect(got.fds).toEqual([]);
      // The end of the stream; then the receive timeout bounds a read of a silent peer.
      expect(recvFds(conn!.fd, 64, 3).data.length).toBe(0);
      closeSync(conn!.fd);
      client.destroy();
    } finally {
      closeSync(fd);
    }
    expect(thrown(() => unixListen(path)).code).toBe('EADDRINUSE');
    expect(thrown(() => unixListen(join(dir, 'x'.repeat(120)))).code).toBe('ENAMETOOLONG');
  });

  it('times out a read of a peer that sends nothing', () => {
    const path = join(dir, 't.sock');
    const fd = unixListen(path);
    const client = connect(path);
    const conn = unixAccept(fd, 5_000, 50)!;
    expect(thrown(() => recvFds(conn.fd, 64, 3)).code).toMatch(/^E(AGAIN|WOULDBLOCK)$/);
    closeSync(conn.fd);
    closeSync(fd);
    client.destroy();
  });

  it('dup2 makes one descriptor a copy of another', () => {
    const a = join(dir, 'dup-a');
    const fd = openSync(a, 'w');
    const target = openSync('/dev/null', 'r');
    dup2(fd, target);
    writeSync(target, 'through the copy');
    closeSync(target);
    closeSync(fd);
    expect(readFileSync(a, 'utf8')).toBe('through the copy');
    expect(thrown(() => dup2(987_654, 3)).code).toBe('EBADF');
  });
});

describe('lstatDir', () => {
  it('reads a directory: names in byte order, lstat numbers and stamps, symlink targets', async () => {
    const d = join(dir, 'fs', 'lstat-dir');
    await mkdir(join(d, 'sub'), { recursive: true });
    // Byte order: 'B' < 'a' < 'é' (c3 a9) < '\uff5e' (ef bd 9e) < '\u{1f600}' (f0 9f 98 80),
    // where UTF-16 order puts the surrogate pair of U+1F600 before U+FF5E.
    for (const n of ['a', 'B', 'é', '\uff5e', '\u{1f600}']) await writeFile(join(d, n), n);
    await writeFile(join(d, 'big'), Buffer.alloc(70_000));
    await symlink('../some/target', join(d, 'ln'));
    mknod(join(d, 'fifo'), 0o010644);
    await chown(join(d, 'a'), 1234, 5678);
    const r = lstatDir(d);
    expect(r.names).toEqual(['B', 'a', 'big', 'fifo', 'ln', 'sub', 'é', '\uff5e', '\u{1f600}']);
    expect(r.links).toEqual(['../some/target']);
    expect(r.stamps).toHaveLength(r.names.length);
    expect(r.nums).toHaveLength(r.names.length * 6);
    r.names.forEach((name, i) => {
      const st = lstatSync(join(d, name), { bigint: true });
      const n = Array.from(r.nums.subarray(i * 6, i * 6 + 6));
      expect(n.slice(0, 4), name).toEqual([st.mode, st.uid, st.gid, st.size].map(Number));
      const mtime = (BigInt(n[5]!) << 32n) | BigInt(n[4]!);
      expect(mtime, name).toBe(st.mtimeNs);
      expect(r.stamps[i], name).toBe(`${st.size}\t${st.mtimeNs}\t${st.ctimeNs}\t${st.ino}`);
    });
    expect(r.nums[r.names.indexOf('a') * 6 + 1]).toBe(1234);
    expect(lstatDir(join(d, 'sub'))).toEqual({
      names: [],
      stamps: [],
      links: [],
      nums: new Float64Array(0),
    });
  });

  it('fails with Node-style errors', () => {
    const missing = thrown(() => lstatDir(join(dir, 'no-such-dir')));
    expect([missing.code, missing.syscall, missing.path]).toEqual([
      'ENOENT',
      'opendir',
      join(dir, 'no-such-dir'),
    ]);
    expect(thrown(() => lstatDir('/proc/self/status')).code).toBe('ENOTDIR');
  });
});
