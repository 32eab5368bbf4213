/**
 * A rootless worker: the worker's own entry started as an unprivileged user (`kiln`, with
 * subordinate ids in /etc/subuid and /etc/subgid, made by scripts/setup.sh), re-executing itself
 * in a user namespace as BuildKit's rootless mode does, builds a corpus Dockerfile (RUN, COPY
 * --chown, chown) through a real scheduler, and its image is the one a root worker makes. On the
 * host, the files the build gave to its users belong to the subordinate ids. No mocks: nats-server,
 * the S3 store (s3rver), crun, overlayfs in the user namespace.
 */
import { execFile } from 'node:child_process';
import { chmod, chown, cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gunzipSync } from 'node:zlib';
import { main } from '@kiln/cli';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { bundleEntries, startScheduler } from '../chaos/farm.js';
import type { Entries } from '../chaos/farm.js';
import { makeTempDir, spawnManaged, startNats, waitFor } from '../harness/index.js';
import type { ManagedProcess, NatsServerHandle } from '../harness/index.js';

const run = promisify(execFile);
const fixture = process.env.KILN_TEST_FIXTURE_IMAGE ?? '';
const corpusCase = join(import.meta.dirname, '../../corpus/user');

let tmp: { dir: string; remove: () => void };
let entries: Entries;
let nats: NatsServerHandle;
let scheduler: { proc: ManagedProcess; addr: string };
let kilnUid: number;
const workers: ManagedProcess[] = [];
/** The image the root worker made of the corpus case (the reference). */
let reference: { config: unknown; layers: string[][] };

/** The S3 store every process of this farm shares (the global one, under a prefix of our own). */
const s3Env = (): Record<string, string> => ({
  KILN_S3_ENDPOINT: process.env.KILN_TEST_S3_ENDPOINT ?? '',
  KILN_S3_BUCKET: process.env.KILN_TEST_S3_BUCKET ?? '',
  KILN_S3_ACCESS_KEY: process.env.KILN_TEST_S3_ACCESS_KEY ?? '',
  KILN_S3_SECRET_KEY: process.env.KILN_TEST_S3_SECRET_KEY ?? '',
  KILN_S3_PREFIX: `rootless-${process.pid}/`,
});

/** Starts the worker entry, as root or (through setpriv) as `user`; resolves once it registered. */
async function startWorker(
  id: string,
  o: { user?: string; args?: string[] } = {},
): Promise<{ proc: ManagedProcess; output: () => string }> {
  const stateDir = join(tmp.dir, id);
  await mkdir(stateDir, { recursive: true });
  const args = [entries.worker, '--id', id, '--state-dir', stateDir, ...(o.args ?? [])];
  const env: Record<string, string> = {
    ...(process.env as Record<string, string>),
    ...s3Env(),
    KILN_NATS_URL: nats.url,
    KILN_WORKER_HEARTBEAT_MS: '250',
    KILN_WORKER_DRAIN_TIMEOUT_MS: '5000',
    KILN_LOG_LEVEL: 'info',
  };
  let proc: ManagedProcess;
  if (o.user !== undefined) {
    await chown(stateDir, kilnUid, kilnUid);
    env.HOME = join(tmp.dir, 'home');
    proc = spawnManaged(
      'setpriv',
      [`--reuid=${o.user}`, `--regid=${o.user}`, '--init-groups', process.execPath, ...args],
      { name: `worker ${id}`, env },
    );
  } else {
    proc = spawnManaged(process.execPath, args, { name: `worker ${id}`, env });
  }
  workers.push(proc);
  await waitFor(`worker ${id} to register`, () => proc.output().includes('"worker registered"'), {
    abort: () => (proc.hasExited() ? `worker ${id} exited:\n${proc.output()}` : undefined),
  });
  return { proc, output: () => proc.output() };
}

async function kiln(args: string[]): Promise<{ code: number; stderr: string }> {
  const err: string[] = [];
  const spy = vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
    err.push(Buffer.from(chunk).toString());
    return true;
  });
  try {
    return { code: await main(['node', 'kiln', ...args]), stderr: err.join('') };
  } finally {
    spy.mockRestore();
  }
}

/**
 * Every entry of an uncompressed tar as `type name mode uid:gid sha256(content) -> link`: what an
 * image's layer says about its files, without the modification times (each build has its own).
 */
function tarEntries(tar: Buffer): string[] {
  const out: string[] = [];
  const str = (b: Buffer): string => b.toString('utf8').replace(/\0.*$/s, '');
  const oct = (b: Buffer): number => parseInt(str(b).trim() || '0', 8);
  let longName: string | undefined;
  for (let off = 0; off + 512 <= tar.length;) {
    const h = tar.subarray(off, off + 512);
    if (h.every((b) => b === 0)) break;
    const size = oct(h.subarray(124, 136));
    const type = String.fromCharCode(h[156] || 48);
    const body = tar.subarray(off + 512, off + 512 + size);
    off += 512 + Math.ceil(size / 512) * 512;
    if (type === 'x') {
      // PAX: only `path` matters here (mtimes are not compared).
      longName = /\d+ path=([^\n]*)\n/.exec(body.toString('utf8'))?.[1];
      continue;
    }
    const prefix = str(h.subarray(345, 500));
    const name = longName ?? (prefix ? `${prefix}/` : '') + str(h.subarray(0, 100));
    longName = undefined;
    const sum = createHash('sha256').update(body).digest('hex').slice(0, 16);
    out.push(
      `${type} ${name} ${oct(h.subarray(100, 108)).toString(8)} ${oct(h.subarray(108, 116))}:${oct(h.subarray(116, 124))} ${sum} -> ${str(h.subarray(157, 257))}`,
    );
  }
  return out;
}

/** The image a build exported as an OCI tarball: its config (without dates) and layer entries. */
async function readImage(tarFile: string): Promise<{ config: unknown; layers: string[][] }> {
  const dir = `${tarFile}.d`;
  await mkdir(dir, { recursive: true });
  await run('tar', ['-xf', tarFile, '-C', dir]);
  const blob = (d: string): Promise<Buffer> =>
    readFile(join(dir, 'blobs/sha256', d.slice('sha256:'.length)));
  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as {
    manifests: { digest: string }[];
  };
  const manifest = JSON.parse((await blob(index.manifests[0]!.digest)).toString()) as {
    config: { digest: string };
    layers: { digest: string }[];
  };
  const config = JSON.parse((await blob(manifest.config.digest)).toString()) as {
    created?: string;
    history?: { created?: string }[];
    rootfs?: { diff_ids?: string[] };
  };
  // Dates, and the layers' digests (their files' mtimes are the build's): compared entry by entry.
  delete config.created;
  for (const h of config.history ?? []) delete h.created;
  delete config.rootfs?.diff_ids;
  const layers = await Promise.all(
    manifest.layers.map(async (l) => tarEntries(gunzipSync(await blob(l.digest)))),
  );
  return { config, layers };
}

/** Builds the corpus case on the farm into `out` (an OCI tarball), without the farm's cache. */
async function build(out: string): Promise<void> {
  const ctx = join(tmp.dir, 'ctx');
  await rm(ctx, { recursive: true, force: true });
  await cp(corpusCase, ctx, { recursive: true });
  await rm(join(ctx, 'expect.json'));
  const res = await kiln([
    ...['build', ctx, '--addr', scheduler.addr, '--progress', 'plain', '--no-cache'],
    ...['--build-arg', `BASE=${fixture}`, '-o', `type=oci,dest=${out}`],
  ]);
  expect(res.code, res.stderr).toBe(0);
}

beforeAll(async () => {
  if (!fixture)
    throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through the vitest global setup');
  kilnUid = Number((await run('id', ['-u', 'kiln'])).stdout.trim());
  tmp = makeTempDir('rootless-worker');
  // The unprivileged user reads the bundled entry and writes its own state dir and home.
  await chmod(tmp.dir, 0o755);
  entries = await bundleEntries(join(tmp.dir, 'bundle'));
  await mkdir(join(tmp.dir, 'home'));
  await chown(join(tmp.dir, 'home'), kilnUid, kilnUid);
  nats = await startNats();
  scheduler = await startScheduler(entries, nats.url, { env: s3Env() });
});

afterAll(async () => {
  for (const w of workers) await w.stop(10_000);
  await scheduler?.proc.stop(10_000);
  await nats?.stop();
  tmp?.remove();
});

/** The first id of kiln's range in /etc/subuid or /etc/subgid. */
async function firstSubordinate(file: string): Promise<number> {
  const m = /^kiln:(\d+):/m.exec(await readFile(file, 'utf8'));
  if (m === null) throw new Error(`kiln has no range in ${file}: run scripts/setup.sh`);
  return Number(m[1]);
}

/** The image has the reference's config and, layer by layer, the same entries. */
function expectSameImage(img: { config: unknown; layers: string[][] }): void {
  expect(img.config).toEqual(reference.config);
  expect(img.layers.length).toBe(reference.layers.length);
  for (let i = 0; i < img.layers.length; i++)
    expect(img.layers[i], `layer ${i}`).toEqual(reference.layers[i]);
}

/** A RUN's id map, seccomp mode and network interfaces, on the farm's only worker. */
async function probe(): Promise<{ map: string[][]; seccomp: string; links: string }> {
  const ctx = join(tmp.dir, 'probe');
  const out = join(tmp.dir, 'probe-out');
  await mkdir(ctx, { recursive: true });
  await rm(out, { recursive: true, force: true });
  await writeFile(
    join(ctx, 'Dockerfile'),
    [
      'ARG BASE',
      'FROM ${BASE}',
      'RUN cat /proc/self/uid_map > /uid_map && grep ^Seccomp: /proc/self/status > /seccomp \\',
      '  && (ip -o link | cut -d" " -f2 | tr -d : | sort | tr "\\n" " " > /links)',
    ].join('\n'),
  );
  const res = await kiln([
    ...['build', ctx, '--addr', scheduler.addr, '--progress', 'plain', '--no-cache'],
    ...['--build-arg', `BASE=${fixture}`, '-o', `type=local,dest=${out}`],
  ]);
  if (res.code !== 0) throw new Error(`the probe build failed:\n${res.stderr}`);
  const read = async (f: string) => (await readFile(join(out, f), 'utf8')).trim();
  return {
    map: (await read('uid_map')).split('\n').map((l) => l.trim().split(/\s+/)),
    seccomp: await read('seccomp'),
    links: await read('links'),
  };
}

describe('a rootless worker', () => {
  it('builds the corpus Dockerfile (RUN, COPY --chown, chown) as a root worker does', async () => {
    const rootful = await startWorker('rootful');
    await build(join(tmp.dir, 'rootful.tar'));
    await rootful.proc.stop(10_000);

    const rootless = await startWorker('rootless', { user: 'kiln' });
    await build(join(tmp.dir, 'rootless.tar'));
    // The build ran there (not on a leftover of the first worker).
    expect(rootless.output()).toContain('"task claimed"');

    reference = await readImage(join(tmp.dir, 'rootful.tar'));
    // The build's own files, as the image says: root's and svc's (2000:2001) ids.
    const own = reference.layers.slice(1).flat();
    expect(own.some((e) => / home\/svc\/owned\.txt 644 2000:2001 /.test(e))).toBe(true);
    expect(own.some((e) => / home\/svc\/work\/made-by-svc 644 2000:2001 /.test(e))).toBe(true);
    expect(own.some((e) => / etc\/passwd 644 0:0 /.test(e))).toBe(true);
    expectSameImage(await readImage(join(tmp.dir, 'rootless.tar')));

    // On the host, svc's file belongs to its subordinate ids (inside, 1..65536 are kiln's range
    // from /etc/subuid and /etc/subgid, so uid 2000 is the range's 2000th id).
    const state = join(tmp.dir, 'rootless');
    const { stdout } = await run('find', [state, '-name', 'made-by-svc', '-printf', '%U:%G\n']);
    const uid = (await firstSubordinate('/etc/subuid')) + 2000 - 1;
    const gid = (await firstSubordinate('/etc/subgid')) + 2001 - 1;
    expect(stdout.trim().split('\n')[0]).toBe(`${uid}:${gid}`);
    await rootless.proc.stop(10_000);
  }, 600_000);

  it('a RUN there is in the user namespace, with seccomp, and without a network', async () => {
    const rootless = await startWorker('rootless-probe', { user: 'kiln' });
    const p = await probe();
    expect(p.map).toEqual([
      ['0', String(kilnUid), '1'],
      ['1', String(await firstSubordinate('/etc/subuid')), '65536'],
    ]);
    expect(p.seccomp).toBe('Seccomp:\t2');
    expect(p.links).toBe('lo');
    await rootless.proc.stop(10_000);

    // A limit it cannot apply fails the RUN, saying why.
    const limited = await startWorker('rootless-limited', {
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
        ...['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, entries.worker],
        ...['--id', 'nobody', '--state-dir', join(tmp.dir, 'nobody')],
      ],
      { name: 'worker nobody', env: { ...(process.env as Record<string, string>), ...s3Env() } },
    );
    workers.push(proc);
    const exit = await proc.exited;
    expect(exit.code).toBe(1);
    expect(proc.output()).toContain(
      'user nobody has no subordinate ids in /etc/subuid (a build needs 65536): add them, e.g. usermod --add-subuids',
    );
    expect(proc.output()).toContain('[WORKER_USERNS]');
  });
});

describe('a root worker with --userns-remap kiln', () => {
  it("runs RUNs in a namespace of kiln's subordinate ids: same image, shifted files, limits apply", async () => {
    const remapped = await startWorker('remapped', {
      args: ['--userns-remap', 'kiln', '--memory-limit', '64MiB'],
    });
    const p = await probe();
    const sub = await firstSubordinate('/etc/subuid');
    expect(p.map).toEqual([['0', String(sub), '65536']]);
    expect(p.seccomp).toBe('Seccomp:\t2');

    await build(join(tmp.dir, 'remapped.tar'));
    expectSameImage(await readImage(join(tmp.dir, 'remapped.tar')));
    const state = join(tmp.dir, 'remapped');
    const { stdout } = await run('find', [state, '-name', 'made-by-svc', '-printf', '%U:%G\n']);
    const gsub = await firstSubordinate('/etc/subgid');
    expect(stdout.trim().split('\n')[0]).toBe(`${sub + 2000}:${gsub + 2001}`);
    // container root is not host root: /etc/passwd of a snapshot is the range's first id
    const owners = await run('find', [state, '-path', '*/etc/passwd', '-printf', '%U\n']);
    expect(new Set(owners.stdout.trim().split('\n'))).toEqual(new Set([String(sub)]));

    // The delegated cgroup holds the task groups: the memory limit still stops a RUN.
    const ctx = join(tmp.dir, 'hog');
    await mkdir(ctx, { recursive: true });
    await writeFile(
      join(ctx, 'Dockerfile'),
      'ARG BASE\nFROM ${BASE}\nRUN busybox dd if=/dev/zero of=/dev/null bs=256M count=1\n',
    );
    const res = await kiln([
      ...['build', ctx, '--addr', scheduler.addr, '--progress', 'plain', '--no-cache'],
      ...['--build-arg', `BASE=${fixture}`],
    ]);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain('was killed at its memory limit (64 MiB)');
    await remapped.proc.stop(10_000);
  }, 600_000);
});
