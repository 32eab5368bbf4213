import { mkdtemp, readFile, readdir, rm, stat, writeFile, mkdir } from 'node:fs/promises';
import { createConnection, createServer } from 'node:net';
import type { Server } from 'node:net';
import { tmpdir } from 'node:os';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { pb } from '@kiln/protocol';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OverlaySnapshotter, mountTemp } from '../../snapshot/index.js';
import type { Snapshotter } from '../../snapshot/index.js';
import { ExecError, OciRuntime } from '../../runtime/index.js';
import {
  CacheMounts,
  SecretNotFoundError,
  SshNotFoundError,
  runExec,
  sweepExecState,
} from './index.js';
import type { ExecEnv, RunExecOptions } from './index.js';
import { SocketForwarder } from './session-mounts.js';
import { makeBusyboxRootfs } from '@kiln/testing';

let root: string;
let snapshotter: Snapshotter;
let env: ExecEnv;
let agent: Server;
let agentPath: string;
const SECRET = 's3cr3t-value-7d1f';

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'kiln-exec-'));
  snapshotter = await OverlaySnapshotter.open({ root: join(root, 'snapshots') });
  const runtime = await OciRuntime.open({ stateDir: join(root, 'runtime') });
  // the base image: a busybox rootfs as a committed snapshot
  await snapshotter.prepare('busybox-w');
  const m = await mountTemp(await snapshotter.mounts('busybox-w'), join(root, 'mnt'));
  await makeBusyboxRootfs(m.path);
  await m.release();
  await snapshotter.commit('busybox', 'busybox-w');
  // a second input: a data tree
  await snapshotter.prepare('data-w');
  const d = await mountTemp(await snapshotter.mounts('data-w'), join(root, 'mnt'));
  await mkdir(join(d.path, 'sub'));
  await writeFile(join(d.path, 'sub', 'file'), 'in sub\n');
  await writeFile(join(d.path, 'top'), 'top\n');
  await d.release();
  await snapshotter.commit('data', 'data-w');

  agentPath = join(root, 'agent.sock');
  agent = createServer((c) => c.end('pong\n'));
  await new Promise<void>((resolve) => agent.listen(agentPath, resolve));

  env = {
    snapshotter,
    runtime,
    stateDir: join(root, 'worker'),
    secrets: (id) => Promise.resolve(id === 'tok' ? new TextEncoder().encode(SECRET) : undefined),
    ssh: (id) => Promise.resolve(id === 'default' ? agentPath : undefined),
  };
});

afterAll(async () => {
  await new Promise((resolve) => agent.close(resolve));
  await rm(root, { recursive: true, force: true });
});

const rootMount = (output = 0): pb.IMount => ({
  input: 0,
  dest: '/',
  output,
  mountType: pb.MountType.BIND,
});

function op(
  script: string,
  mounts: pb.IMount[] = [rootMount()],
  meta: pb.IMeta = {},
  extra: pb.IExecOp = {},
): pb.IExecOp {
  return { meta: { args: ['/bin/sh', '-c', script], cwd: '/', ...meta }, mounts, ...extra };
}

async function run(
  o: pb.IExecOp,
  inputs: string[] = ['busybox'],
  more: Partial<RunExecOptions> = {},
) {
  const out: Buffer[] = [];
  const res = await runExec(env, { op: o, inputs, onOutput: (_s, c) => out.push(c), ...more });
  return { ...res, stdout: Buffer.concat(out).toString() };
}

async function readIn(snapshot: string, path: string): Promise<string> {
  const m = await mountTemp(await snapshotter.mounts(snapshot), join(root, 'mnt'));
  try {
    return await readFile(join(m.path, path), 'utf8');
  } finally {
    await m.release();
  }
}

async function listTree(dir: string, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  for (const n of (await readdir(dir)).sort()) {
    out.push(`${prefix}${n}`);
    const st = await stat(join(dir, n)).catch(() => undefined);
    if (st?.isDirectory()) out.push(...(await listTree(join(dir, n), `${prefix}${n}/`)));
  }
  return out;
}

describe('runExec', () => {
  it('commits the writable rootfs with only the change (no mount stubs), as user kiln in a new cwd', async () => {
    const res = await run(
      op('echo hello > /tmp/newfile; id -u; pwd; echo $FOO', [rootMount()], {
        user: 'kiln',
        cwd: '/home/kiln/w',
        env: ['FOO=bar'],
      }),
    );
    expect(res.stdout).toBe('1000\n/home/kiln/w\nbar\n');
    const out = res.outputs.get(0)!;
    expect(await readIn(out, 'tmp/newfile')).toBe('hello\n');
    expect(await snapshotter.parentChain(out)).toEqual(['busybox']);
    // the upper dir holds the new file and the created cwd, not the /etc/hosts and /etc/resolv.conf
    // stubs (their removal leaves /etc copied up, empty, with its timestamps restored)
    expect(await listTree((await snapshotter.upperDir(out))!)).toEqual([
      'etc',
      'home',
      'home/kiln',
      'home/kiln/w',
      'tmp',
      'tmp/newfile',
    ]);
    const upperEtc = await stat(join((await snapshotter.upperDir(out))!, 'etc'));
    const m = await mountTemp(await snapshotter.mounts('busybox'), join(root, 'mnt'));
    try {
      expect(Math.abs(upperEtc.mtimeMs - (await stat(join(m.path, 'etc'))).mtimeMs)).toBeLessThan(
        0.01,
      );
    } finally {
      await m.release();
    }
    await snapshotter.remove(out);
  });

  it('leaves no /proc, /dev or /sys in the result of a rootfs that had none (spec mount stubs)', async () => {
    // A base without the mount points: the runtime creates them to mount on, the result drops
    // them again (BuildKit's MountStubsCleanerForSpec), so the layer holds only the change.
    await snapshotter.prepare('bare-w');
    const b = await mountTemp(await snapshotter.mounts('bare-w'), join(root, 'mnt'));
    await makeBusyboxRootfs(b.path);
    for (const d of ['proc', 'dev', 'sys']) await rm(join(b.path, d), { recursive: true });
    await b.release();
    await snapshotter.commit('bare', 'bare-w');
    const res = await run(op('test -r /proc/self/status && test -c /dev/null && echo ok > /ok'), [
      'bare',
    ]);
    const out = res.outputs.get(0)!;
    expect(await readIn(out, 'ok')).toBe('ok\n');
    const upper = await listTree((await snapshotter.upperDir(out))!);
    expect(upper).toContain('ok');
    for (const d of ['proc', 'dev', 'sys']) expect(upper).not.toContain(d);
    await snapshotter.remove(out);
  });

  it('fails with ExecError and leaves no snapshot behind', async () => {
    const before = (await snapshotter.list()).map((i) => i.key);
    const err = await run(op('echo bad; exit 3')).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ExecError);
    expect((err as ExecError).exitCode).toBe(3);
    expect((err as ExecError).tail).toBe('bad');
    expect((await snapshotter.list()).map((i) => i.key)).toEqual(before);
  });

  it('mounts read-only and writable binds of inputs, with selectors, and commits the writable one', async () => {
    const res = await run(
      op(
        'cat /ro/top /sel/file; touch /ro/x 2>/dev/null && echo ro-writable; echo changed > /rw/top; echo ok',
        [
          rootMount(-1),
          { input: 1, dest: '/ro', output: -1, readonly: true },
          { input: 1, dest: '/sel', output: -1, readonly: true, selector: '/sub' },
          { input: 1, dest: '/rw', output: 1 },
        ],
      ),
      ['busybox', 'data'],
    );
    expect(res.stdout).toBe('top\nin sub\nok\n');
    expect([...res.outputs.keys()]).toEqual([1]);
    const out = res.outputs.get(1)!;
    expect(await readIn(out, 'top')).toBe('changed\n');
    expect(await readIn('data', 'top')).toBe('top\n');
    // the mount points made for /ro, /sel and /rw in the thrown-away rootfs are gone with it
    expect(
      (await snapshotter.list())
        .map((i) => i.key)
        .filter((k) => k.startsWith('exec-') && k !== out),
    ).toEqual([]);
    await snapshotter.remove(out);
  });

  it('never writes into a read-only input, not even a mount point', async () => {
    const o = op('true', [
      rootMount(-1),
      { input: 1, dest: '/ro', output: -1, readonly: true },
      { dest: '/ro/nested', mountType: pb.MountType.TMPFS },
    ]);
    await expect(run(o, ['busybox', 'data'])).rejects.toMatchObject({
      code: 'RUNTIME_START_FAILED',
    });
    const m = await mountTemp(await snapshotter.mounts('data'), join(root, 'mnt'));
    try {
      expect((await readdir(m.path)).sort()).toEqual(['sub', 'top']);
    } finally {
      await m.release();
    }
  });

  it('cleans up everything when aborted', async () => {
    const before = (await snapshotter.list()).map((i) => i.key);
    const ac = new AbortController();
    const settled = runExec(env, {
      op: op('echo started; exec sleep 1000', [rootMount(), { input: 1, dest: '/rw', output: 1 }]),
      inputs: ['busybox', 'data'],
      signal: ac.signal,
      onOutput: (_s, c) => {
        if (c.toString().includes('started')) ac.abort();
      },
    }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(await settled).toMatchObject({ code: 'RUNTIME_ABORTED' });
    expect((await snapshotter.list()).map((i) => i.key)).toEqual(before);
    expect(await env.runtime.list()).toEqual([]);
    expect(await readdir(join(root, 'worker', 'exec', 'mnt'))).toEqual([]);
  });

  it('keeps a cache mount across runs and out of the output', async () => {
    const cache: pb.IMount = {
      input: -1,
      dest: '/cache',
      output: -1,
      mountType: pb.MountType.CACHE,
      cacheOpt: { ID: 'test-cache', sharing: pb.CacheSharingOpt.LOCKED },
    };
    const r1 = await run(op('echo run1 >> /cache/log; cat /cache/log', [rootMount(), cache]));
    const r2 = await run(
      op('echo run2 >> /cache/log; cat /cache/log', [rootMount(), cache], {
        removeMountStubsRecursive: true,
      }),
    );
    expect(r1.stdout).toBe('run1\n');
    expect(r2.stdout).toBe('run1\nrun2\n');
    for (const r of [r1, r2]) {
      expect(await listTree((await snapshotter.upperDir(r.outputs.get(0)!))!)).toEqual(['etc']);
      await snapshotter.remove(r.outputs.get(0)!);
    }
  });

  it('mounts tmpfs with its size', async () => {
    const res = await run(
      op('grep " /t " /proc/mounts', [
        rootMount(-1),
        { dest: '/t', mountType: pb.MountType.TMPFS, TmpfsOpt: { size: 4 * 1024 * 1024 } },
      ]),
    );
    expect(res.stdout).toMatch(/^tmpfs \/t tmpfs rw,nosuid,nodev,relatime,size=4096k/);
  });

  it('mounts a secret with its mode and owner, and never commits it', async () => {
    const res = await run(
      op(
        'stat -c "%a %u %g" /run/secrets/tok; cat /run/secrets/tok; echo; grep " /run/secrets/tok " /proc/mounts | cut -d" " -f3',
        [
          rootMount(),
          {
            dest: '/run/secrets/tok',
            mountType: pb.MountType.SECRET,
            secretOpt: { ID: 'tok', uid: 1000, gid: 1000, mode: 0o440 },
          },
        ],
        { removeMountStubsRecursive: true },
      ),
    );
    expect(res.stdout).toBe(`440 1000 1000\n${SECRET}\ntmpfs\n`);
    const out = res.outputs.get(0)!;
    expect(await listTree((await snapshotter.upperDir(out))!)).toEqual(['etc']);
    const m = await mountTemp(await snapshotter.mounts(out), join(root, 'mnt'));
    try {
      await expect(stat(join(m.path, 'run/secrets/tok'))).rejects.toMatchObject({ code: 'ENOENT' });
      await expect(stat(join(m.path, 'run'))).rejects.toMatchObject({ code: 'ENOENT' });
    } finally {
      await m.release();
    }
    await snapshotter.remove(out);
    // nothing is left in the worker's state dir either
    expect((await listTree(join(root, 'worker'))).filter((p) => p.includes('secrets'))).toEqual([]);
  });

  it('rejects a missing required secret and skips a missing optional one', async () => {
    const secret = (optional: boolean): pb.IMount => ({
      dest: '/s',
      mountType: pb.MountType.SECRET,
      secretOpt: { ID: 'nope', optional },
    });
    await expect(run(op('true', [rootMount(-1), secret(false)]))).rejects.toBeInstanceOf(
      SecretNotFoundError,
    );
    expect((await run(op('test -e /s || echo absent', [rootMount(-1), secret(true)]))).stdout).toBe(
      'absent\n',
    );
    // secret env
    expect(
      (
        await run(
          op('echo $TOKEN', [rootMount(-1)], {}, { secretenv: [{ ID: 'tok', name: 'TOKEN' }] }),
        )
      ).stdout,
    ).toBe(`${SECRET}\n`);
  });

  it('forwards an SSH agent socket with its mode and owner', async () => {
    const res = await run(
      op('stat -c "%F %a %u %g" /run/ssh.sock', [
        rootMount(-1),
        {
          dest: '/run/ssh.sock',
          mountType: pb.MountType.SSH,
          SSHOpt: { ID: 'default', uid: 1000, gid: 1000, mode: 0o600 },
        },
      ]),
    );
    expect(res.stdout).toBe('socket 600 1000 1000\n');
    await expect(
      run(
        op('true', [
          rootMount(-1),
          { dest: '/s', mountType: pb.MountType.SSH, SSHOpt: { ID: 'other' } },
        ]),
      ),
    ).rejects.toBeInstanceOf(SshNotFoundError);
  });

  it('runs with network none', async () => {
    const res = await run(
      op('ip -o link | cut -d: -f2', [rootMount(-1)], {}, { network: pb.NetMode.NONE }),
    );
    expect(res.stdout.trim()).toBe('lo');
  });
});

describe('sweepExecState', () => {
  it('unmounts and removes what a dead process left, keeping cache mounts', async () => {
    const state = join(root, 'dead-worker');
    const stale = join(state, 'exec', 'secrets-stale');
    await mkdir(stale, { recursive: true });
    await mkdir(join(state, 'cache-mounts', 'x'), { recursive: true });
    await promisify(execFile)('mount', ['-t', 'tmpfs', 'tmpfs', stale]);
    expect(await readFile('/proc/self/mountinfo', 'utf8')).toContain(stale);
    await sweepExecState(state);
    expect(await readFile('/proc/self/mountinfo', 'utf8')).not.toContain(stale);
    expect(await readdir(state)).toEqual(['cache-mounts']);
  });
});

describe('SocketForwarder', () => {
  it('forwards connections to the target socket', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kiln-fwd-'));
    const fwd = await SocketForwarder.listen(join(dir, 'f.sock'), agentPath, 0, 0, 0o600);
    try {
      const reply = await new Promise<string>((resolve, reject) => {
        let data = '';
        createConnection(fwd.path)
          .on('data', (c) => (data += c.toString()))
          .on('end', () => resolve(data))
          .on('error', reject);
      });
      expect(reply).toBe('pong\n');
      expect((await stat(fwd.path)).mode & 0o777).toBe(0o600);
    } finally {
      await fwd.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('CacheMounts', () => {
  const flush = async (): Promise<void> => {
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  };

  it('shares, privatises and locks directories per id', async () => {
    const cm = new CacheMounts(join(root, 'cm'));
    const a = await cm.acquire('id1', 'shared');
    const b = await cm.acquire('id1', 'shared');
    expect(b.path).toBe(a.path);
    expect(a.created).toBe(true);
    expect(b.created).toBe(false);
    const p = await cm.acquire('id1', 'private');
    expect(p.path).not.toBe(a.path);
    let lockedGot = false;
    const locked = cm.acquire('id1', 'locked').then((h) => {
      lockedGot = true;
      return h;
    });
    await flush();
    expect(lockedGot).toBe(false);
    a.release();
    await flush();
    expect(lockedGot).toBe(false);
    b.release();
    const l = await locked;
    expect(l.path).toBe(a.path);
    // while locked, a private user gets another free directory: the one released by `p`
    p.release();
    const p2 = await cm.acquire('id1', 'private');
    expect(p2.path).toBe(p.path);
    l.release();
    p2.release();
    const other = await cm.acquire('id2', 'shared');
    expect(other.path).not.toBe(a.path);
    other.release();
  });
});
