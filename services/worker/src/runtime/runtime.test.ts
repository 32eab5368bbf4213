import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { lstat, mkdir, mkdtemp, readFile, readdir, rm, rmdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BridgeNetwork } from './bridge.js';
import { DEFAULT_PATH, ExecError, LimitExceededError, OciRuntime, RuntimeError } from './index.js';
import type { RunOptions, RunSpec } from './index.js';
import { hostIpv4Addresses, makeBusyboxRootfs, startOutsideHost, waitFor } from '@kiln/testing';
import type { OutsideHost } from '@kiln/testing';

const execFileP = promisify(execFile);
let root: string;
let rootfs: string;
let rt: OciRuntime;
let server: Server;
let port: number;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'kiln-rt-'));
  rootfs = await makeBusyboxRootfs(join(root, 'rootfs'));
  rt = await OciRuntime.open({ stateDir: join(root, 'state') });
  server = createServer((_req, res) => res.end('hello from host\n'));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as AddressInfo).port;
});

afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
  await rm(root, { recursive: true, force: true });
});

/** Runs `sh -c script` in the busybox rootfs and returns stdout. */
async function sh(
  script: string,
  extra: Partial<RunSpec> = {},
  opts: RunOptions = {},
): Promise<string> {
  const chunks: Buffer[] = [];
  await rt.run(
    { rootfs, args: ['/bin/sh', '-c', script], ...extra },
    {
      ...opts,
      onOutput: (stream, c) => {
        if (stream === 'stdout') chunks.push(c);
        opts.onOutput?.(stream, c);
      },
    },
  );
  return Buffer.concat(chunks).toString('utf8');
}

describe('OciRuntime', () => {
  it('starts the process with no signal ignored or blocked (as a Go runtime starts it)', async () => {
    // The worker (Node) ignores SIGPIPE; the runtime is started with posix_spawn, which must
    // reset that and glibc's internal signals, or every RUN would inherit them ignored.
    const chunks: Buffer[] = [];
    await rt.run(
      { rootfs, args: ['grep', '-E', '^Sig(Ign|Blk)', '/proc/self/status'] },
      { onOutput: (s, c) => s === 'stdout' && chunks.push(c) },
    );
    expect(Buffer.concat(chunks).toString()).toMatch(/^SigBlk:\s+0+\nSigIgn:\s+0+\n$/);
  });

  it('picks crun here and streams output', async () => {
    expect(rt.name).toBe('crun');
    const seen: string[] = [];
    const res = await rt.run(
      { rootfs, args: ['echo', 'hi'] },
      { onOutput: (s, c) => seen.push(`${s}:${c.toString()}`) },
    );
    expect(res.exitCode).toBe(0);
    expect(seen.join('')).toBe('stdout:hi\n');
    expect(res.containerId).toMatch(/^kiln-[0-9a-f]{16}$/);
  });

  it('fails with ExecError carrying the exit code and the tail of the output', async () => {
    const err = await rt
      .run({
        rootfs,
        args: [
          '/bin/sh',
          '-c',
          'for i in $(seq 1 50); do echo line $i; done; echo oops >&2; exit 3',
        ],
      })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(err).toBeInstanceOf(ExecError);
    const e = err as ExecError;
    expect(e.code).toBe('EXEC_FAILED');
    expect(e.exitCode).toBe(3);
    expect(e.message).toContain('exit code: 3');
    const lines = e.tail.split('\n');
    expect(lines).toHaveLength(20);
    expect(lines.at(-1)).toBe('oops');
    expect(lines).toContain('line 50');
    expect(lines).not.toContain('line 1');
    // a valid non-zero exit code is a success
    expect(
      (await rt.run({ rootfs, args: ['/bin/sh', '-c', 'exit 3'], validExitCodes: [0, 3] }))
        .exitCode,
    ).toBe(3);
  });

  it('reports a runtime failure (missing executable) as RUNTIME_START_FAILED', async () => {
    await expect(rt.run({ rootfs, args: ['/no/such/binary'] })).rejects.toMatchObject({
      code: 'RUNTIME_START_FAILED',
    });
  });

  it('resolves users and groups against the rootfs', async () => {
    // busybox `id` lists getgroups(): the supplementary groups from /etc/group memberships
    expect(await sh('id; id -G', { user: 'kiln' })).toBe(
      'uid=1000(kiln) gid=1000(kiln) groups=50(staff)\n1000 50\n',
    );
    expect(await sh('id -u; id -g; id -G', { user: '1000' })).toBe('1000\n1000\n1000 50\n');
    // an explicit group: no supplementary groups (runc's GetExecUser)
    expect(await sh('id -u; id -g; id -G', { user: 'kiln:staff' })).toBe('1000\n50\n50\n');
    expect(await sh('id -u; id -g', { user: '4242:4343' })).toBe('4242\n4343\n');
    expect(await sh('id -u; id -g', { user: '4242' })).toBe('4242\n0\n');
    expect(await sh('id -u; id -g', { user: 'nobody' })).toBe('65534\n65534\n');
    expect(await sh('id -u; id -g')).toBe('0\n0\n');
    await expect(sh('id', { user: 'nosuchuser' })).rejects.toMatchObject({
      code: 'RUNTIME_USER_NOT_FOUND',
    });
    await expect(sh('id', { user: 'kiln:nosuchgroup' })).rejects.toBeInstanceOf(RuntimeError);
  });

  it('creates the working directory and sets env with a default PATH', async () => {
    expect(await sh('pwd', { cwd: '/work/deep/dir' })).toBe('/work/deep/dir\n');
    expect((await lstat(join(rootfs, 'work/deep/dir'))).isDirectory()).toBe(true);
    const env = (await sh('env', { env: ['FOO=bar baz'] })).split('\n');
    expect(env).toContain('FOO=bar baz');
    expect(env).toContain(`PATH=${DEFAULT_PATH}`);
    expect((await sh('echo $PATH', { env: ['PATH=/bin'] })).trim()).toBe('/bin');
  });

  it('sets the hostname and writes /etc/hosts, then removes the stubs it created', async () => {
    expect(await sh('hostname')).toBe('buildkitsandbox\n');
    expect(
      await sh('hostname; cat /etc/hosts', {
        hostname: 'box1',
        extraHosts: [{ host: 'db', ip: '10.1.2.3' }],
      }),
    ).toBe(
      'box1\n127.0.0.1\tlocalhost box1\n::1\tlocalhost ip6-localhost ip6-loopback\n10.1.2.3\tdb\n',
    );
    // the rootfs had no /etc/hosts nor /etc/resolv.conf: the empty mount targets are gone again
    await expect(lstat(join(rootfs, 'etc/hosts'))).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(lstat(join(rootfs, 'etc/resolv.conf'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it("shares /etc/hosts and /etc/resolv.conf between sandbox runs, never an insecure run's", async () => {
    const shared = join(root, 'state', 'shared');
    const hosts = async (): Promise<string[]> =>
      (await readdir(shared).catch(() => [])).filter((n) => n.startsWith('hosts-'));
    const before = await hosts();
    // One file for the runs with the same hostname, read-only inside.
    expect(await sh('cat /etc/hosts', { hostname: 'shared1' })).toContain('localhost shared1');
    expect(await sh('cat /etc/hosts', { hostname: 'shared1' })).toContain('localhost shared1');
    const after = await hosts();
    expect(after).toHaveLength(before.length + 1);
    expect(await sh('echo x >> /etc/hosts 2>&1 || echo refused', { hostname: 'shared1' })).toMatch(
      /refused/,
    );
    // A privileged run could remount its bind writable: its files are its own.
    expect(
      await sh('mount -o remount,rw /etc/hosts && echo rw; cat /etc/hosts', {
        hostname: 'insecure1',
        security: 'insecure',
      }),
    ).toContain('localhost insecure1');
    expect(await hosts()).toEqual(after);
  });

  it('network none has only lo and cannot reach the host; host network can', async () => {
    const links = await sh('ip -o link', { network: 'none' });
    expect(
      links
        .trim()
        .split('\n')
        .map((l) => l.split(':')[1]?.trim()),
    ).toEqual(['lo']);
    const url = `http://127.0.0.1:${port}/`;
    const err = await sh(`wget -q -O - ${url}`, { network: 'none' }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ExecError);
    expect((err as ExecError).exitCode).toBe(1);
    expect((err as ExecError).tail).toContain("can't connect to remote host");
    expect(await sh(`wget -q -O - ${url}`, { network: 'host' })).toBe('hello from host\n');
  });

  it('puts the sandbox network on a NATed bridge: own eth0, an address of its own', async () => {
    expect(rt.sandboxNetwork).toBe('bridge');
    const links = await sh('ip -o link');
    expect(
      links
        .trim()
        .split('\n')
        .map((l) => l.split(':')[1]?.trim().replace(/@.*/, '')),
    ).toEqual(['lo', 'eth0']);
    expect(await sh('ip -4 -o addr show dev eth0')).toMatch(/inet 10\.89\.\d+\.\d+\/16/);
    // the host's loopback is not the container's
    await expect(sh(`wget -q -O - http://127.0.0.1:${port}/`)).rejects.toBeInstanceOf(ExecError);
    // two containers at once get different addresses
    const [a, b] = await Promise.all([
      sh("ip -4 -o addr show dev eth0 | awk '{print $4}'"),
      sh("ip -4 -o addr show dev eth0 | awk '{print $4}'"),
    ]);
    expect(a).not.toBe(b);
  });

  it('has no IPv6 on the bridge nor on eth0, so not the host through link-local', async () => {
    // The host's side of the bridge has no IPv6 address (link-local included) and takes none:
    // IPv6 that reaches it is dropped, so a host service on `::` is not reachable from a RUN.
    expect((await execFileP('ip', ['-6', '-o', 'addr', 'show', 'dev', 'kiln0'])).stdout).toBe('');
    const v6 = await readFile('/proc/sys/net/ipv6/conf/kiln0/disable_ipv6', 'utf8');
    expect(v6.trim()).toBe('1');
    // Nor has the container's eth0 (its lo keeps ::1).
    const out = await sh(
      'cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6; ip -6 -o addr show dev eth0 | wc -l',
    );
    expect(out.trim().split('\n')).toEqual(['1', '0']);
  });

  it("cannot reach another RUN's container on the bridge, at its address or through the gateway", async () => {
    // One RUN listens (and says its address); the other tries to reach it, directly (port
    // isolation) and routed through the gateway (the FORWARD chain).
    const addrFile = join(root, `listener-${process.pid}`);
    await writeFile(addrFile, '');
    const listener = sh(
      [
        "ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1 > /shared/addr",
        'timeout 20 nc -l -p 8080 -e echo reached || true',
      ].join('; '),
      { mounts: [{ type: 'bind', source: addrFile, destination: '/shared/addr' }] },
    );
    const peer = await waitFor(
      'the listener to say its address',
      async () => (await readFile(addrFile, 'utf8')).trim() || undefined,
    );
    const direct = await sh(
      `(timeout 5 nc ${peer} 8080 </dev/null | grep -q reached && echo reached || echo refused)`,
    );
    expect(direct.trim()).toBe('refused');
    // A sandboxed RUN cannot add a route (no NET_ADMIN); an insecure one can: the host still
    // refuses to forward between the bridge's ports.
    const routed = await sh(
      [
        `ip route add ${peer}/32 via 10.89.0.1`,
        `(timeout 5 nc ${peer} 8080 </dev/null | grep -q reached && echo reached || echo refused)`,
      ].join('; '),
      { security: 'insecure' },
    );
    expect(routed.trim()).toBe('refused');
    await listener;
  }, 120_000);

  it("reaches the outside but not the host's own addresses nor the denied ones", async () => {
    // "The outside": a host in a network namespace of its own, routed through this one, with
    // two addresses, the second denied to the sandbox (as the farm's control plane would be).
    let outside: OutsideHost | undefined;
    // a listener on every address of the host: the gateway's and the host's main address
    const any = createServer((_req, res) => res.end('hello from the host\n'));
    await new Promise<void>((resolve) => any.listen(0, '0.0.0.0', resolve));
    const anyPort = (any.address() as AddressInfo).port;
    let isolated: OciRuntime | undefined;
    try {
      outside = await startOutsideHost();
      const { allowed, denied } = outside;
      const hostAddrs = await hostIpv4Addresses();
      // reachable from the host, gateway included
      for (const a of hostAddrs)
        expect(await (await fetch(`http://${a}:${anyPort}/`)).text()).toBe('hello from the host\n');
      isolated = await OciRuntime.open({
        stateDir: join(root, 'state-isolated'),
        sandboxDeny: [denied],
      });
      const probe = (url: string) =>
        `busybox timeout 10 wget -q -O - ${url} >/dev/null 2>&1 && echo reached || echo refused`;
      const script = [
        probe(`http://${allowed}:8080/`),
        probe(`http://${denied}:8080/`),
        ...hostAddrs.map((a) => probe(`http://${a}:${anyPort}/`)),
      ].join('; ');
      const chunks: Buffer[] = [];
      await isolated.run(
        { rootfs, args: ['/bin/sh', '-c', script] },
        { onOutput: (_s, c) => chunks.push(c) },
      );
      expect(Buffer.concat(chunks).toString().trim().split('\n')).toEqual([
        'reached',
        'refused',
        ...hostAddrs.map(() => 'refused'),
      ]);
      expect(await sh(`wget -q -O - http://${allowed}:8080/`)).toBe('hello from outside\n');
    } finally {
      await outside?.stop();
      await new Promise((resolve) => any.close(resolve));
    }
  });

  it('fails to open, rather than fall back to the host network, when the bridge cannot be isolated', async () => {
    const err = await OciRuntime.open({
      stateDir: join(root, 'state-bad-deny'),
      sandboxDeny: ['10.1.2.3/99'],
    }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(RuntimeError);
    expect(err).toMatchObject({ code: 'RUNTIME_IO', details: { isolation: true } });
    expect((err as Error).message).toContain('isolating bridge kiln0');
  });

  it('sweeps the namespaces and leases of dead processes when setting up the bridge', async () => {
    const dead = spawnSync('true').pid;
    const id = `kiln-dead${process.pid}`;
    const leaseDir = '/run/kiln/ipam/10.89.0.0-16';
    await execFileP('ip', ['netns', 'add', `kiln-${id}`]);
    await writeFile(join(leaseDir, '10.89.255.254'), `${dead} ${id}`);
    const bridge = await BridgeNetwork.setup({ poolSize: 0 });
    await bridge.close();
    expect((await execFileP('ip', ['netns', 'list'])).stdout).not.toContain(`kiln-${id}`);
    await expect(lstat(join(leaseDir, '10.89.255.254'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('hands out pooled namespaces, each once, refills the pool and deletes released ones', async () => {
    const bridge = await BridgeNetwork.setup({ poolSize: 2 });
    try {
      await waitFor('the pool to fill', () => bridge.pooled === 2);
      const a = await bridge.attach('unused-a');
      const b = await bridge.attach('unused-b');
      expect(a.nsPath).not.toBe(b.nsPath);
      expect(a.ip).not.toBe(b.ip);
      // Pooled, not made for these ids.
      expect(a.nsPath).toMatch(/\/run\/netns\/kiln-pool-/);
      const list = (await execFileP('ip', ['netns', 'list'])).stdout;
      expect(list).toContain(a.nsPath.slice('/run/netns/'.length));
      await a.release();
      await b.release();
      const gone = async (p: string): Promise<boolean> =>
        !(await execFileP('ip', ['netns', 'list'])).stdout.includes(p.slice('/run/netns/'.length));
      await waitFor('released namespaces to be deleted', async () =>
        (await gone(a.nsPath)) && (await gone(b.nsPath)) ? true : undefined,
      );
      await waitFor('the pool to refill', () => bridge.pooled === 2);
    } finally {
      await bridge.close();
    }
  });

  it('keeps the namespaces of a burst of runs that come back as reusable, up to poolMax', async () => {
    const bridge = await BridgeNetwork.setup({ poolSize: 1, poolMax: 3 });
    try {
      await waitFor('the pool to fill', () => bridge.pooled === 1);
      const out = [];
      for (const id of ['burst-a', 'burst-b', 'burst-c', 'burst-d'])
        out.push(await bridge.attach(id));
      for (const a of out) await a.release(true);
      // Three kept (the fourth deleted): the next burst takes them, makes none.
      expect(bridge.pooled).toBe(3);
      const again = [await bridge.attach('burst-e'), await bridge.attach('burst-f')];
      const kept = new Set(out.slice(0, 3).map((a) => a.nsPath));
      for (const a of again) expect(kept.has(a.nsPath)).toBe(true);
      for (const a of again) await a.release(true);
    } finally {
      await bridge.close();
    }
  });

  it('takes back a namespace released as reusable, up to poolMax, and deletes the rest', async () => {
    const bridge = await BridgeNetwork.setup({ poolSize: 1, poolMax: 1 });
    try {
      await waitFor('the pool to fill', () => bridge.pooled === 1);
      const a = await bridge.attach('unused-c');
      // Out with its container, `a` still counts as pooled: no namespace is made to replace it.
      const b = await bridge.attach('unused-d'); // the pool is empty: made now
      expect(bridge.pooled).toBe(0);
      expect(b.nsPath).toBe('/run/netns/kiln-unused-d');
      await a.release(true); // back in the pool
      expect(bridge.pooled).toBe(1);
      await b.release(true); // the pool is full: deleted
      const gone = async (p: string): Promise<boolean> =>
        !(await execFileP('ip', ['netns', 'list'])).stdout.includes(p.slice('/run/netns/'.length));
      await waitFor('the extra namespace to be deleted', async () =>
        (await gone(b.nsPath)) ? true : undefined,
      );
      // The next attach gets `a` again, same address (no refill replaced it meanwhile).
      const again = await bridge.attach('unused-e');
      expect(again.nsPath).toBe(a.nsPath);
      expect(again.ip).toBe(a.ip);
      await again.release(); // not reusable (e.g. an insecure run): deleted, and replaced
      await waitFor('the non-reusable namespace to be deleted', async () =>
        (await gone(again.nsPath)) ? true : undefined,
      );
      await waitFor('the pool to refill', () => bridge.pooled === 1);
      expect(bridge.pooled).toBe(1);
    } finally {
      await bridge.close();
    }
  });

  it('mounts tmpfs with a size, read-only and read-write binds, and removes new mount points', async () => {
    const hostDir = join(root, 'bind-src');
    await mkdir(hostDir, { recursive: true });
    await writeFile(join(hostDir, 'f'), 'from host');
    const out = await sh(
      'grep " /scratch " /proc/mounts; cat /mnt/deep/ro/f; touch /mnt/deep/ro/x 2>/dev/null && echo ro-writable; echo new > /rw/g; echo done',
      {
        removeMountStubsRecursive: true,
        mounts: [
          { type: 'tmpfs', destination: '/scratch', size: 8 * 1024 * 1024 },
          { type: 'bind', source: hostDir, destination: '/mnt/deep/ro', readonly: true },
          { type: 'bind', source: hostDir, destination: '/rw' },
        ],
      },
    );
    expect(out).toMatch(/^tmpfs \/scratch tmpfs rw,nosuid,nodev,relatime,size=8192k/);
    expect(out).not.toContain('ro-writable');
    expect(out).toContain('from host');
    expect(out.trim().endsWith('done')).toBe(true);
    expect(await readFile(join(hostDir, 'g'), 'utf8')).toBe('new\n');
    for (const p of ['scratch', 'mnt', 'rw']) {
      await expect(lstat(join(rootfs, p))).rejects.toMatchObject({ code: 'ENOENT' });
    }
  });

  it('drops capabilities in the sandbox and grants them all when insecure', async () => {
    const capEff = (s: string): bigint => BigInt(`0x${/CapEff:\s*([0-9a-f]+)/.exec(s)![1]!}`);
    const sandbox = capEff(await sh('cat /proc/self/status'));
    const insecure = capEff(await sh('cat /proc/self/status', { security: 'insecure' }));
    expect(sandbox).toBe(0xa80425fbn); // containerd's default set
    expect(insecure & (1n << 21n)).toBe(1n << 21n); // CAP_SYS_ADMIN
    expect(await sh('grep " /sys " /proc/mounts | cut -d" " -f4 | cut -d, -f1')).toBe('ro\n');
    expect(
      await sh('grep " /sys " /proc/mounts | cut -d" " -f4 | cut -d, -f1', {
        security: 'insecure',
      }),
    ).toBe('rw\n');
  });

  it("applies Docker's default seccomp profile in the sandbox, none when insecure", async () => {
    expect(await sh('grep ^Seccomp: /proc/self/status')).toBe('Seccomp:\t2\n');
    // crun got the filter compiled once at open (what the unshare below meets), not the profile
    expect(rt.seccompBpf?.failure).toBeUndefined();
    expect(await rt.seccompBpf?.size()).toBe(1);
    expect(await sh('grep ^Seccomp: /proc/self/status', { security: 'insecure' })).toBe(
      'Seccomp:\t0\n',
    );
    // a user namespace (and mounts inside it) is refused without CAP_SYS_ADMIN
    const unshare = await rt
      .run({
        rootfs,
        args: [
          'busybox',
          'unshare',
          '-U',
          '-r',
          '-m',
          'busybox',
          'mount',
          '-t',
          'tmpfs',
          'x',
          '/tmp',
        ],
      })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(unshare).toBeInstanceOf(ExecError);
    expect((unshare as ExecError).tail).toMatch(/unshare.*Operation not permitted/);
    expect(
      await sh('busybox unshare -U -r -m busybox mount -t tmpfs x /tmp && echo ok', {
        security: 'insecure',
      }),
    ).toBe('ok\n');
    // no host block device can be mounted: the node can be made, not mounted nor opened
    const dev = (await readFile('/proc/partitions', 'utf8'))
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .find((f) => f.length === 4 && /^\d+$/.test(f[0]!) && f[3] !== 'name');
    expect(dev).toBeDefined();
    const [major, minor] = dev!;
    const mnt = await sh(
      `busybox mknod /tmp/blk b ${major} ${minor}; busybox mount /tmp/blk /mnt 2>&1; echo "mount=$?"; head -c 1 /tmp/blk 2>&1; echo "read=$?"; busybox rm -f /tmp/blk`,
    );
    expect(mnt).toMatch(/mount=[1-9]/);
    expect(mnt).toMatch(/Operation not permitted/);
    expect(mnt).toMatch(/read=[1-9]/);
  });

  it('gives the container the usual /dev and kernel filesystems', async () => {
    const out = await sh('ls /dev; echo ---; cut -d" " -f2,3 /proc/mounts');
    const [devs, mounts] = out.split('---\n');
    for (const d of ['full', 'null', 'random', 'tty', 'urandom', 'zero', 'pts', 'shm', 'mqueue']) {
      expect(devs!.split('\n')).toContain(d);
    }
    for (const m of [
      '/proc proc',
      '/dev tmpfs',
      '/dev/pts devpts',
      '/dev/shm tmpfs',
      '/dev/mqueue mqueue',
      '/sys sysfs',
    ]) {
      expect(mounts!.split('\n')).toContain(m);
    }
    expect(await sh('echo x > /dev/null && head -c 4 /dev/zero | wc -c')).toBe('4\n');
  });

  it('puts the container under the cgroup parent', async () => {
    const parent = `kiln-test-${process.pid}`;
    try {
      const out = await sh('cat /proc/self/cgroup', { cgroupParent: parent });
      const lines = out.trim().split('\n');
      expect(lines.length).toBeGreaterThan(0);
      // the task's group holds its limits, the container is in its `ctr`
      for (const l of lines)
        expect(l).toMatch(new RegExp(`:/${parent}/kiln/kiln-[0-9a-f]{16}/ctr$`));
    } finally {
      // the runtime removes the task's cgroup; the parents are the caller's
      await rt.settled();
      for (const hier of await readdir('/sys/fs/cgroup')) {
        const dir = join('/sys/fs/cgroup', hier, parent);
        await rmdir(join(dir, 'kiln')).catch(() => undefined);
        await rmdir(dir).catch(() => undefined);
      }
    }
  });

  it('applies ulimits', async () => {
    expect(await sh('ulimit -n', { ulimits: [{ name: 'nofile', soft: 512, hard: 1024 }] })).toBe(
      '512\n',
    );
  });

  it('runs an arm64 rootfs through binfmt', async () => {
    const arm = await makeBusyboxRootfs(join(root, 'rootfs-arm64'), 'arm64');
    const chunks: Buffer[] = [];
    await rt.run({ rootfs: arm, args: ['uname', '-m'] }, { onOutput: (_s, c) => chunks.push(c) });
    expect(Buffer.concat(chunks).toString()).toBe('aarch64\n');
  });

  it('kills an aborted run promptly and leaves no container behind', async () => {
    const ac = new AbortController();
    let started!: () => void;
    const isStarted = new Promise<void>((r) => (started = r));
    const run = rt.run(
      { rootfs, args: ['/bin/sh', '-c', 'echo started; exec sleep 1000'] },
      {
        signal: ac.signal,
        onOutput: (_s, c) => {
          if (c.toString().includes('started')) started();
        },
      },
    );
    const settled = run.then(
      () => undefined,
      (e: unknown) => e,
    );
    await isStarted;
    expect(await rt.list()).toHaveLength(1);
    ac.abort();
    const err = await settled;
    expect(err).toMatchObject({ code: 'RUNTIME_ABORTED' });
    expect(await rt.list()).toEqual([]);
    // a timeout does the same
    await expect(
      rt.run({ rootfs, args: ['sleep', '1000'] }, { timeoutMs: 200 }),
    ).rejects.toMatchObject({
      code: 'RUNTIME_ABORTED',
    });
    expect(await rt.list()).toEqual([]);
  });

  describe('task limits', () => {
    const cgroupRoot = `kiln-test-limits-${process.pid}`;
    let limited: OciRuntime;
    beforeAll(async () => {
      limited = await OciRuntime.open({
        stateDir: join(root, 'state-limits'),
        sandboxNetwork: 'host',
        cgroupRoot,
        limits: { memoryBytes: 64 * 1024 * 1024, pids: 64, cpuShares: 256, timeMs: 60_000 },
      });
    });
    afterAll(async () => {
      for (const hier of await readdir('/sys/fs/cgroup'))
        await rmdir(join('/sys/fs/cgroup', hier, cgroupRoot)).catch(() => undefined);
    });
    const fail = (spec: Partial<RunSpec>, opts: RunOptions = {}): Promise<unknown> =>
      limited.run({ rootfs, args: [], ...spec }, opts).then(
        () => undefined,
        (e: unknown) => e,
      );
    /** The task cgroups under the test's root, in `hier` (v1) or the v2 tree. */
    const groups = async (hier: string): Promise<string[]> => {
      const v2 = limited.cgroups!.version === 2;
      const dir = join('/sys/fs/cgroup', v2 ? '' : hier, cgroupRoot);
      return (await readdir(dir, { withFileTypes: true }).catch(() => []))
        .filter((d) => d.isDirectory())
        .map((d) => join(dir, d.name));
    };

    it('kills a memory-hungry run at its memory limit with a typed error', async () => {
      const err = await fail({
        args: [
          '/bin/sh',
          '-c',
          'echo filling; busybox dd if=/dev/zero of=/dev/null bs=256M count=1',
        ],
      });
      expect(err).toBeInstanceOf(LimitExceededError);
      const e = err as LimitExceededError;
      expect(e.code).toBe('TASK_LIMIT_EXCEEDED');
      expect(e.limit).toBe('memory');
      expect(e.value).toBe(64 * 1024 * 1024);
      expect(e.message).toContain('memory limit (64 MiB)');
      expect(e.details).toMatchObject({ limit: 'memory', exitCode: 137 });
      expect(e.details.tail).toContain('filling');
      // the same run fits under a higher limit for this run
      await limited.run(
        { rootfs, args: ['busybox', 'dd', 'if=/dev/zero', 'of=/dev/null', 'bs=16M', 'count=1'] },
        { limits: { memoryBytes: 512 * 1024 * 1024 } },
      );
      await limited.settled();
      expect(await groups('memory')).toEqual([]);
    });

    it('stops a fork bomb at the pids limit', async () => {
      const err = await fail(
        { args: ['/bin/sh', '-c', 'bomb() { bomb | bomb & }; bomb; while :; do :; done'] },
        { limits: { timeMs: 3_000 } },
      );
      expect(err).toBeInstanceOf(LimitExceededError);
      const e = err as LimitExceededError;
      expect(e.limit).toBe('pids');
      expect(e.message).toMatch(
        /pids limit \(64 processes\), where forks fail, then killed at its time limit/,
      );
      // a bounded one: the shell fails at the first refused fork
      const bounded = await fail({
        args: ['/bin/sh', '-c', 'for i in $(seq 1 200); do sleep 30 & done; wait'],
      });
      expect(bounded).toMatchObject({ code: 'TASK_LIMIT_EXCEEDED', limit: 'pids' });
      expect((bounded as LimitExceededError).details.tail).toMatch(/can't fork/);
      expect(await limited.list()).toEqual([]);
    });

    it('kills a run past its time limit', async () => {
      const err = await fail({ args: ['sleep', '1000'] }, { limits: { timeMs: 300 } });
      expect(err).toBeInstanceOf(LimitExceededError);
      expect(err).toMatchObject({ limit: 'time', value: 300 });
      expect((err as Error).message).toContain('time limit (300 ms)');
      expect(await limited.list()).toEqual([]);
    });

    it('sets the CPU shares of the task, removes its cgroup afterwards, sweeps stale ones', async () => {
      let started!: () => void;
      const isStarted = new Promise<void>((r) => (started = r));
      // the container waits on a fifo until the test has looked
      const sig = await mkdtemp(join(root, 'sig-'));
      await execFileP('mkfifo', [join(sig, 'go')]);
      const run = limited.run(
        {
          rootfs,
          args: ['/bin/sh', '-c', 'echo started; cat /sig/go'],
          mounts: [{ type: 'bind', source: sig, destination: '/sig' }],
        },
        { onOutput: () => started() },
      );
      await isStarted;
      const v2 = limited.cgroups!.version === 2;
      const [g] = await groups('cpu');
      expect(g).toBeDefined();
      const shares = (await readFile(join(g!, v2 ? 'cpu.weight' : 'cpu.shares'), 'utf8')).trim();
      expect(shares).toBe(v2 ? '10' : '256');
      // a sweep removes empty groups (one left by a dead process), never one in use
      const stale = `/${cgroupRoot}/kiln-0123456789abcdef`;
      await limited.cgroups!.create(stale, { pids: 8 });
      expect(await groups('cpu')).toHaveLength(2);
      await limited.cgroups!.sweep(`/${cgroupRoot}`, 0);
      expect(await groups('cpu')).toEqual([g]);
      await writeFile(join(sig, 'go'), 'go\n');
      await run;
      await limited.settled(); // released after the run's result
      expect(await groups('cpu')).toEqual([]);
    });
  });

  it('runs under runc when asked', async () => {
    const runc = await OciRuntime.open({ stateDir: join(root, 'state-runc'), runtime: 'runc' });
    expect(runc.name).toBe('runc');
    const chunks: Buffer[] = [];
    await runc.run(
      { rootfs, args: ['/bin/sh', '-c', 'id -u; hostname'], user: 'kiln', cwd: 'rel/dir' },
      { onOutput: (_s, c) => chunks.push(c) },
    );
    expect(Buffer.concat(chunks).toString()).toBe('1000\nbuildkitsandbox\n');
    await expect(runc.run({ rootfs, args: ['/bin/sh', '-c', 'exit 7'] })).rejects.toMatchObject({
      exitCode: 7,
    });
    expect(await runc.list()).toEqual([]);
  });

  it('sweeps the containers and bundles a dead process left in its state dir', async () => {
    const stateDir = join(root, 'state-sweep');
    const first = await OciRuntime.open({ stateDir });
    let started!: () => void;
    const isStarted = new Promise<void>((r) => (started = r));
    const orphan = first
      .run(
        { rootfs, args: ['/bin/sh', '-c', 'echo started; exec sleep 1000'] },
        { onOutput: () => started() },
      )
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    await isStarted;
    expect(await first.list()).toHaveLength(1);
    // a new instance on the same dir (as after a worker restart) kills and deletes it
    const second = await OciRuntime.open({ stateDir });
    expect(await second.list()).toEqual([]);
    expect(await orphan).toMatchObject({ code: 'EXEC_FAILED', exitCode: 137 });
  });
});
