/**
 * A rootless worker: the worker's own entry started as an unprivileged user (`kiln`, with
 * subordinate ids in /etc/subuid and /etc/subgid, made by scripts/setup.sh), re-executing itself
 * in a user namespace as BuildKit's rootless mode does, builds a corpus Dockerfile (RUN, COPY
 * --chown, chown) through a real scheduler, and its image is the one a root worker makes. On the
 * host, the files the build gave to its users belong to the subordinate ids. No mocks: nats-server,
 * the S3 store (s3rver), crun, overlayfs in the user namespace.
 */
import { execFile } from 'node:child_process';
import { cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CGROUP_ROOT_ENV, delegateCgroup } from '@kiln/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { corpusDir, readImage } from './corpus.js';
import type { ComparableImage } from './corpus.js';
import { runKiln } from './run-kiln.js';
import { firstSubordinate, startUsernsFarm } from './userns-farm.js';
import type { UsernsFarm } from './userns-farm.js';
import { hostIpv4Addresses, spawnManaged, startOutsideHost } from '../harness/index.js';
import type { OutsideHost } from '../harness/index.js';

const run = promisify(execFile);
const fixture = process.env.KILN_TEST_FIXTURE_IMAGE ?? '';
const corpusCase = join(corpusDir, 'user');

let farm: UsernsFarm;
/** The image the root worker made of the corpus case (the reference). */
let reference: ComparableImage;

async function kiln(args: string[]): Promise<{ code: number; stderr: string }> {
  const res = await runKiln(args);
  return { code: res.code, stderr: res.out };
}

/** Builds the corpus case on the farm into `out` (an OCI tarball), without the farm's cache. */
async function build(out: string): Promise<void> {
  const ctx = join(farm.dir, 'ctx');
  await rm(ctx, { recursive: true, force: true });
  await cp(corpusCase, ctx, { recursive: true });
  await rm(join(ctx, 'expect.json'));
  const res = await kiln([
    ...['build', ctx, '--addr', farm.scheduler.addr, '--progress', 'plain', '--no-cache'],
    ...['--build-arg', `BASE=${fixture}`, '-o', `type=oci,dest=${out}`],
  ]);
  expect(res.code, res.stderr).toBe(0);
}

beforeAll(async () => {
  if (!fixture)
    throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through the vitest global setup');
  farm = await startUsernsFarm('rootless-worker');
});

afterAll(async () => {
  await farm?.stop();
});

/** The image has the reference's config and, layer by layer, the same entries. */
function expectSameImage(img: ComparableImage): void {
  expect(img.config).toEqual(reference.config);
  expect(img.layers.length).toBe(reference.layers.length);
  for (let i = 0; i < img.layers.length; i++)
    expect(img.layers[i], `layer ${i}`).toEqual(reference.layers[i]);
}

/** What `script` prints, run as a RUN (as root) on the farm's only worker, without cache. */
async function runScript(script: string): Promise<string> {
  const ctx = join(farm.dir, 'probe');
  const out = join(farm.dir, 'probe-out');
  await mkdir(ctx, { recursive: true });
  await rm(out, { recursive: true, force: true });
  await writeFile(join(ctx, 'script.sh'), script);
  await writeFile(
    join(ctx, 'Dockerfile'),
    'ARG BASE\nFROM ${BASE}\nRUN --mount=target=/ctx sh /ctx/script.sh > /out\n',
  );
  const res = await kiln([
    ...['build', ctx, '--addr', farm.scheduler.addr, '--progress', 'plain', '--no-cache'],
    ...['--build-arg', `BASE=${fixture}`, '-o', `type=local,dest=${out}`],
  ]);
  if (res.code !== 0) throw new Error(`the probe build failed:\n${res.stderr}`);
  return (await readFile(join(out, 'out'), 'utf8')).trim();
}

/** A RUN's id map, seccomp mode and network interfaces, on the farm's only worker. */
async function probe(): Promise<{ map: string[][]; seccomp: string; links: string }> {
  const [map, seccomp, links] = (
    await runScript(
      [
        'cat /proc/self/uid_map; echo ---',
        'grep ^Seccomp: /proc/self/status; echo ---',
        'ip -o link | cut -d" " -f2 | cut -d@ -f1 | tr -d : | sort | tr "\\n" " "',
      ].join('\n'),
    )
  ).split('---\n');
  return {
    map: map!
      .trim()
      .split('\n')
      .map((l) => l.trim().split(/\s+/)),
    seccomp: seccomp!.trim(),
    links: links!.trim(),
  };
}

describe('a rootless worker', () => {
  it('builds the corpus Dockerfile (RUN, COPY --chown, chown) as a root worker does', async () => {
    const rootful = await farm.startWorker('rootful');
    await build(join(farm.dir, 'rootful.tar'));
    await rootful.proc.stop(10_000);

    const rootless = await farm.startWorker('rootless', { user: 'kiln' });
    await build(join(farm.dir, 'rootless.tar'));
    // The build ran there (not on a leftover of the first worker).
    expect(rootless.claims()).toBeGreaterThan(0);

    reference = await readImage(join(farm.dir, 'rootful.tar'));
    // The build's own files, as the image says: root's and svc's (2000:2001) ids.
    const own = reference.layers.slice(1).flat();
    expect(own.some((e) => / home\/svc\/owned\.txt 644 2000:2001 /.test(e))).toBe(true);
    expect(own.some((e) => / home\/svc\/work\/made-by-svc 644 2000:2001 /.test(e))).toBe(true);
    expect(own.some((e) => / etc\/passwd 644 0:0 /.test(e))).toBe(true);
    expectSameImage(await readImage(join(farm.dir, 'rootless.tar')));

    // On the host, svc's file belongs to its subordinate ids (inside, 1..65536 are kiln's range
    // from /etc/subuid and /etc/subgid, so uid 2000 is the range's 2000th id).
    const state = join(farm.dir, 'rootless');
    const { stdout } = await run('find', [state, '-name', 'made-by-svc', '-printf', '%U:%G\n']);
    const uid = (await firstSubordinate('/etc/subuid')) + 2000 - 1;
    const gid = (await firstSubordinate('/etc/subgid')) + 2001 - 1;
    expect(stdout.trim().split('\n')[0]).toBe(`${uid}:${gid}`);
    await rootless.proc.stop(10_000);
  }, 600_000);

  it('a RUN there is in the user namespace, with seccomp, on the sandbox network', async () => {
    const rootless = await farm.startWorker('rootless-probe', { user: 'kiln' });
    const p = await probe();
    expect(p.map).toEqual([
      ['0', String(farm.kilnUid), '1'],
      ['1', String(await firstSubordinate('/etc/subuid')), '65536'],
    ]);
    expect(p.seccomp).toBe('Seccomp:\t2');
    expect(p.links).toBe('eth0 lo');
    await rootless.proc.stop(10_000);

    // A limit it cannot apply fails the RUN, saying why.
    const limited = await farm.startWorker('rootless-limited', {
      user: 'kiln',
      args: ['--memory-limit', '64MiB'],
    });
    const err = await probe().then(
      () => '',
      (e: unknown) => String(e),
    );
    expect(err).toContain('no cgroup was delegated to it');
    expect(err).toContain('RUNTIME_UNAVAILABLE');
    await limited.proc.stop(10_000);
  }, 300_000);

  it('a user without subordinate ids gets a typed error saying what to add', async () => {
    const proc = spawnManaged(
      'setpriv',
      [
        ...[
          '--reuid=65534',
          '--regid=65534',
          '--clear-groups',
          process.execPath,
          farm.entries.worker,
        ],
        ...['--id', 'nobody', '--state-dir', join(farm.dir, 'nobody')],
      ],
      { name: 'worker nobody' },
    );
    const exit = await proc.exited;
    expect(exit.code).toBe(1);
    expect(proc.output()).toContain(
      'user nobody has no subordinate ids in /etc/subuid (a build needs 65536): add them, e.g. usermod --add-subuids',
    );
    expect(proc.output()).toContain('[WORKER_USERNS]');
  });
});

/** Builds a RUN that needs 256 MiB of memory, on the farm's only worker. */
async function buildHog(): Promise<{ code: number; stderr: string }> {
  const ctx = join(farm.dir, 'hog');
  await mkdir(ctx, { recursive: true });
  await writeFile(
    join(ctx, 'Dockerfile'),
    'ARG BASE\nFROM ${BASE}\nRUN busybox dd if=/dev/zero of=/dev/null bs=256M count=1\n',
  );
  return kiln([
    ...['build', ctx, '--addr', farm.scheduler.addr, '--progress', 'plain', '--no-cache'],
    ...['--build-arg', `BASE=${fixture}`],
  ]);
}

describe('a rootless worker given a cgroup by root', () => {
  it('applies its memory limit there (KILN_WORKER_CGROUP_ROOT)', async () => {
    // What an operator does once, as root: a group in each hierarchy, its interface files
    // the user's (the limits of the group itself stay root's: a cap the user cannot raise).
    // One name for every run, as a remapped worker's group: nothing accumulates.
    const group = await delegateCgroup('kiln-rootless-test', farm.kilnUid);
    const limited = await farm.startWorker('rootless-cgroup', {
      user: 'kiln',
      args: ['--memory-limit', '64MiB'],
      env: { [CGROUP_ROOT_ENV]: group },
    });
    const res = await buildHog();
    expect(res.code).toBe(1);
    expect(res.stderr).toContain('was killed at its memory limit (64 MiB)');
    await limited.proc.stop(10_000);
  }, 300_000);
});

describe('a root worker with --userns-remap kiln', () => {
  it("runs RUNs in a namespace of kiln's subordinate ids: same image, shifted files, limits apply", async () => {
    const remapped = await farm.startWorker('remapped', {
      args: ['--userns-remap', 'kiln', '--memory-limit', '64MiB'],
    });
    const p = await probe();
    const sub = await firstSubordinate('/etc/subuid');
    expect(p.map).toEqual([['0', String(sub), '65536']]);
    expect(p.seccomp).toBe('Seccomp:\t2');

    await build(join(farm.dir, 'remapped.tar'));
    expectSameImage(await readImage(join(farm.dir, 'remapped.tar')));
    const state = join(farm.dir, 'remapped');
    const { stdout } = await run('find', [state, '-name', 'made-by-svc', '-printf', '%U:%G\n']);
    const gsub = await firstSubordinate('/etc/subgid');
    expect(stdout.trim().split('\n')[0]).toBe(`${sub + 2000}:${gsub + 2001}`);
    // container root is not host root: /etc/passwd of a snapshot is the range's first id
    const owners = await run('find', [state, '-path', '*/etc/passwd', '-printf', '%U\n']);
    expect(new Set(owners.stdout.trim().split('\n'))).toEqual(new Set([String(sub)]));

    // The delegated cgroup holds the task groups: the memory limit still stops a RUN.
    const res = await buildHog();
    expect(res.code).toBe(1);
    expect(res.stderr).toContain('was killed at its memory limit (64 MiB)');
    await remapped.proc.stop(10_000);
  }, 600_000);
});

describe('the sandbox network of a worker in a user namespace (slirp4netns)', () => {
  it("reaches the outside, but not the host's own addresses, its loopback or the denied ones", async () => {
    // A service bound to every address of the host, as a default-bound control plane would be.
    const any = createServer((_req, res) => res.end('hello from the host\n'));
    await new Promise<void>((resolve) => any.listen(0, '0.0.0.0', resolve));
    const anyPort = (any.address() as AddressInfo).port;
    let outside: OutsideHost | undefined;
    try {
      outside = await startOutsideHost();
      const hostAddrs = await hostIpv4Addresses();
      const natsPort = new URL(farm.nats.url).port;
      const schedulerPort = farm.scheduler.addr.split(':')[1]!;
      const wget = (url: string): string =>
        `busybox timeout 10 wget -q -O - ${url} >/dev/null 2>&1 && echo reached || echo refused`;
      // The host's loopback through slirp's gateway (10.0.2.2): NATS and the scheduler listen there.
      const nc = (port: string): string =>
        `echo | busybox timeout 10 nc 10.0.2.2 ${port} >/dev/null 2>&1 && echo reached || echo refused`;
      const script = [
        wget(`http://${outside.allowed}:8080/`),
        wget(`http://${outside.denied}:8080/`),
        ...hostAddrs.map((a) => wget(`http://${a}:${anyPort}/`)),
        wget(`http://10.0.2.2:${anyPort}/`),
        nc(natsPort),
        nc(schedulerPort),
      ].join('\n');
      const want = ['reached', 'refused', ...hostAddrs.map(() => 'refused')];
      want.push('refused', 'refused', 'refused');
      for (const [id, o] of [
        ['rootless-net', { user: 'kiln' }],
        ['remapped-net', { args: ['--userns-remap', 'kiln'] }],
      ] as const) {
        const w = await farm.startWorker(id, {
          ...o,
          args: [...('args' in o ? o.args : []), '--sandbox-deny', outside.denied],
        });
        expect((await runScript(script)).split('\n'), id).toEqual(want);
        await w.proc.stop(10_000);
      }
      // The host itself reaches all of them (the refusals are the sandbox's).
      expect(await (await fetch(`http://${outside.denied}:8080/`)).text()).toBe(outside.answer);
      for (const a of hostAddrs)
        expect(await (await fetch(`http://${a}:${anyPort}/`)).text()).toBe('hello from the host\n');
    } finally {
      await outside?.stop();
      await new Promise((resolve) => any.close(resolve));
    }
  }, 300_000);
});
