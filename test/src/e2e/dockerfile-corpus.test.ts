/**
 * The Dockerfile corpus, built end to end with `kiln build` (the CLI's own entry point) on real
 * containers, against the fixture busybox image in the harness's registry. Each case is a
 * directory of test/corpus: a Dockerfile, its context, and expect.json saying what the output
 * tree and image config must hold (or which error, on which line).
 */
import { execFile } from 'node:child_process';
import {
  cp,
  lstat,
  mkdir,
  mkdtemp,
  readFile,
  readdir,
  readlink,
  rm,
  writeFile,
} from 'node:fs/promises';
import { createServer } from 'node:net';
import type { Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { main } from '@kiln/cli';
import { KilnClient } from '@kiln/client';
import { bundleEntries, startScheduler, startWorker, waitForWorkers } from '../chaos/farm.js';
import {
  BUSYBOX_LAYOUT_DIR,
  makeTempDir,
  natsAuthEnv,
  pushOciLayout,
  sha256Digest,
  startNats,
} from '../harness/index.js';
import { bundleFarmDaemon } from './local-farm-daemon.js';
import type { NatsServerHandle } from '../harness/index.js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { buildTar } from '@kiln/testing';
import { corpusCases, corpusDir, prepareCase, readOci } from './corpus.js';

const run = promisify(execFile);
const fixture = process.env.KILN_TEST_FIXTURE_IMAGE;

let work: string;
let sshServer: Server | undefined;
let sshSock: string;

beforeAll(async () => {
  if (!fixture)
    throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through the vitest global setup');
  work = await mkdtemp(join(tmpdir(), 'kiln-corpus-'));
  process.env.KILN_STATE_DIR = join(work, 'state');
  // `kiln build` without --addr uses the local farm daemon: the one bundled from source.
  process.env.KILN_FARM_DAEMON = await bundleFarmDaemon(join(work, 'bundle'));
  // A stand-in ssh agent: a unix socket that answers; RUN --mount=type=ssh must see a socket.
  sshSock = join(work, 'agent.sock');
  sshServer = createServer((c) => c.end());
  await new Promise<void>((r) => sshServer!.listen(sshSock, r));
});
afterAll(async () => {
  await new Promise<void>((r) => (sshServer ? sshServer.close(() => r()) : r()));
  if (process.env.KILN_FARM_DAEMON) await kiln(['farm', 'stop']);
  delete process.env.KILN_STATE_DIR;
  delete process.env.KILN_FARM_DAEMON;
  await rm(work, { recursive: true, force: true });
});

async function kiln(args: string[]): Promise<{ code: number; stderr: string }> {
  const err: string[] = [];
  const spy = vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
    err.push(Buffer.from(chunk).toString());
    return true;
  });
  try {
    const code = await main(['node', 'kiln', ...args]);
    return { code, stderr: err.join('') };
  } finally {
    spy.mockRestore();
  }
}

async function walkFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await walkFiles(p)));
    else if (e.isFile()) out.push(p);
  }
  return out;
}

interface OciImage {
  config: { architecture: string; os: string; author?: string; config: Record<string, unknown> };
  layers: Buffer[];
}

/** Entry names of an uncompressed tar (ustar headers; PAX long names are not needed here). */
function tarNames(tar: Buffer): string[] {
  const names: string[] = [];
  for (let off = 0; off + 512 <= tar.length;) {
    const h = tar.subarray(off, off + 512);
    if (h.every((b) => b === 0)) break;
    const name = h.subarray(0, 100).toString().replace(/\0.*$/s, '');
    const prefix = h.subarray(345, 500).toString().replace(/\0.*$/s, '');
    const size = parseInt(h.subarray(124, 136).toString().replace(/\0.*$/s, '').trim() || '0', 8);
    names.push(prefix ? `${prefix}/${name}` : name);
    off += 512 + Math.ceil(size / 512) * 512;
  }
  return names;
}

const cases = await corpusCases();

/** Builds corpus case `name` with `kiln build` (plus `extra` flags) and checks what it expects. */
async function runCase(name: string, extra: string[] = [], dir = name): Promise<void> {
  const out = join(work, dir, 'out');
  const { exp, args } = await prepareCase(name, join(work, dir), { base: fixture!, sshSock });
  args.push(
    ...extra,
    '-o',
    `type=local,dest=${join(out, 'rootfs')}`,
    '-o',
    `type=oci,dest=${join(out, 'image.tar')}`,
  );

  const res = await kiln(args);
  if (exp.error) {
    expect(res.code, res.stderr).toBe(1);
    expect(res.stderr).toContain(exp.error.match);
    if (exp.error.line) expect(res.stderr).toContain(`>>>`);
    if (exp.error.line)
      expect(res.stderr).toMatch(new RegExp(`^\\s*${exp.error.line} \\| >>>`, 'm'));
    return;
  }
  expect(res.code, res.stderr).toBe(0);

  const rootfs = join(out, 'rootfs');
  for (const [path, fe] of Object.entries(exp.files ?? {})) {
    const p = join(rootfs, path);
    if (fe.absent) {
      await expect(lstat(p), `${path} should be absent`).rejects.toThrow();
      continue;
    }
    const st = await lstat(p);
    if (fe.type === 'dir') expect(st.isDirectory(), path).toBe(true);
    if (fe.type === 'symlink') expect(st.isSymbolicLink(), path).toBe(true);
    if (fe.type === 'file' || fe.content !== undefined) expect(st.isFile(), path).toBe(true);
    if (fe.content !== undefined) expect(await readFile(p, 'utf8'), path).toBe(fe.content);
    if (fe.mode !== undefined)
      expect((st.mode & 0o7777).toString(8).padStart(4, '0'), path).toBe(fe.mode);
    if (fe.uid !== undefined) expect(st.uid, path).toBe(fe.uid);
    if (fe.gid !== undefined) expect(st.gid, path).toBe(fe.gid);
    if (fe.target !== undefined) expect(await readlink(p), path).toBe(fe.target);
  }

  const img = (await readOci(join(out, 'image.tar'), join(out, 'oci'))) as OciImage;
  for (const [k, v] of Object.entries(exp.config ?? {})) {
    const actual = k === 'architecture' || k === 'os' ? img.config[k] : img.config.config[k];
    expect(actual, `config ${k}`).toEqual(v);
  }
  if (exp.author) expect(img.config.author).toBe(exp.author);
  for (const wh of exp.layerWhiteouts ?? []) {
    expect(
      img.layers.some((l) => tarNames(l).includes(wh)),
      `a layer has ${wh}`,
    ).toBe(true);
  }
  for (const secret of exp.absentEverywhere ?? []) {
    for (const f of await walkFiles(rootfs))
      expect((await readFile(f)).includes(secret), f).toBe(false);
    for (const l of img.layers) expect(l.includes(secret), 'layer').toBe(false);
    expect(JSON.stringify(img.config).includes(secret)).toBe(false);
    expect(res.stderr.includes(secret)).toBe(false);
  }
}

/**
 * Pushes, as `<registry>/<repo>:latest`, the fixture busybox image for this host's platform with
 * one more layer made of `entries` (gzip), through an OCI layout and the harness's pusher.
 */
async function pushWithLayer(
  registry: string,
  repo: string,
  entries: Parameters<typeof buildTar>[0],
): Promise<string> {
  const layout = join(work, `layout-${repo.replace(/\//g, '-')}`);
  await cp(BUSYBOX_LAYOUT_DIR, layout, { recursive: true });
  const blobPath = (d: string): string => join(layout, 'blobs/sha256', d.slice('sha256:'.length));
  const putBlob = async (data: Buffer): Promise<{ digest: string; size: number }> => {
    const digest = sha256Digest(data);
    await writeFile(blobPath(digest), data);
    return { digest, size: data.length };
  };
  const readJson = async <T>(d: string): Promise<T> =>
    JSON.parse(await readFile(blobPath(d), 'utf8')) as T;
  type Desc = {
    mediaType: string;
    digest: string;
    size: number;
    platform?: { architecture: string };
  };
  const top = await readJson<{ manifests: Desc[] }>(
    (JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as { manifests: Desc[] })
      .manifests[0]!.digest,
  );
  const arch = process.arch === 'arm64' ? 'arm64' : 'amd64';
  const desc = top.manifests.find((m) => m.platform?.architecture === arch)!;
  const manifest = await readJson<{ config: Desc; layers: Desc[] }>(desc.digest);
  const config = await readJson<{ rootfs: { diff_ids: string[] } }>(manifest.config.digest);
  const tar = await buildTar(entries);
  const layer = await putBlob(gzipSync(tar));
  config.rootfs.diff_ids.push(sha256Digest(tar));
  const cfg = await putBlob(Buffer.from(JSON.stringify(config)));
  manifest.config = { ...manifest.config, ...cfg };
  manifest.layers.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...layer });
  const m = await putBlob(Buffer.from(JSON.stringify(manifest)));
  await writeFile(
    join(layout, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: desc.mediaType,
          ...m,
          annotations: { 'org.opencontainers.image.ref.name': 'latest' },
        },
      ],
    }),
  );
  await pushOciLayout(layout, registry, repo);
  return `${registry}/${repo}:latest`;
}

describe('Dockerfile corpus, built with kiln build', () => {
  it('has at least 15 cases', () => {
    expect(cases.length).toBeGreaterThanOrEqual(15);
  });

  for (const name of cases) it(name, () => runCase(name), 180_000);

  it('multi-platform: one local dir per platform and one OCI index over both manifests', async () => {
    const ctx = join(work, 'multi', 'ctx');
    const out = join(work, 'multi', 'out');
    await cp(join(corpusDir, 'platform-amd64'), ctx, { recursive: true });
    const res = await kiln([
      'build',
      ctx,
      '--progress',
      'plain',
      '--build-arg',
      `BASE=${fixture}`,
      '--platform',
      'linux/amd64,linux/arm64',
      '-o',
      `type=local,dest=${join(out, 'rootfs')}`,
      '-o',
      `type=oci,dest=${join(out, 'image.tar')}`,
    ]);
    expect(res.code, res.stderr).toBe(0);
    expect(await readFile(join(out, 'rootfs/linux_amd64/platform.txt'), 'utf8')).toMatch(
      /^linux\/amd64 .* x86_64\n$/,
    );
    expect(await readFile(join(out, 'rootfs/linux_arm64/platform.txt'), 'utf8')).toMatch(
      /^linux\/arm64 .* aarch64\n$/,
    );
    const { stdout } = await run('skopeo', [
      'inspect',
      '--raw',
      `oci-archive:${join(out, 'image.tar')}`,
    ]);
    const index = JSON.parse(stdout) as { manifests: { platform?: { architecture: string } }[] };
    expect(index.manifests.map((m) => m.platform?.architecture).sort()).toEqual(['amd64', 'arm64']);
  }, 180_000);

  it('builds FROM an image whose layer has `/` and `./` entries and absolute symlinks on the way', async () => {
    const registry = process.env.KILN_TEST_REGISTRY ?? '';
    expect(registry).not.toBe('');
    // What real-world images hold (containerd applies them): the root as `/` and `./`, names
    // with a leading `./` or `/`, and entries under a symlink with an absolute target.
    const image = await pushWithLayer(registry, 'kiln/rooted', [
      { name: '/', type: 'directory' },
      { name: './', type: 'directory' },
      { name: './opt/', type: 'directory' },
      { name: './opt/real/', type: 'directory' },
      { name: './link', type: 'symlink', linkname: '/opt/real' },
      { name: './link/through.txt', content: 'through\n' },
      { name: '/abs.txt', content: 'abs\n' },
      { name: 'opt/../opt/real/dotdot.txt', content: 'dotdot\n' },
      { name: '/link/hard.txt', type: 'link', linkname: '/link/through.txt' },
    ]);
    const ctx = join(work, 'rooted', 'ctx');
    const out = join(work, 'rooted', 'out');
    await mkdir(ctx, { recursive: true });
    await writeFile(
      join(ctx, 'Dockerfile'),
      'ARG BASE\nFROM ${BASE}\nRUN cat /link/through.txt /abs.txt /opt/real/dotdot.txt > /seen.txt\n',
    );
    const res = await kiln([
      'build',
      ctx,
      '--progress',
      'plain',
      '--build-arg',
      `BASE=${image}`,
      '-o',
      `type=local,dest=${out}`,
    ]);
    expect(res.code, res.stderr).toBe(0);
    expect(await readFile(join(out, 'seen.txt'), 'utf8')).toBe('through\nabs\ndotdot\n');
    expect(await readlink(join(out, 'link'))).toBe('/opt/real');
    expect((await lstat(join(out, 'opt/real/hard.txt'))).isFile()).toBe(true);
    expect(await readFile(join(out, 'bin/busybox')).then((b) => b.length)).toBeGreaterThan(0);
  }, 180_000);

  it('pushes a multi-platform image to a registry (type=registry), an index over both', async () => {
    const registry = process.env.KILN_TEST_REGISTRY ?? '';
    expect(registry).not.toBe('');
    const ctx = join(work, 'push', 'ctx');
    await cp(join(corpusDir, 'platform-amd64'), ctx, { recursive: true });
    const name = `${registry}/kiln/pushed:${Date.now().toString(36)}`;
    const res = await kiln([
      'build',
      ctx,
      '--progress',
      'plain',
      '--build-arg',
      `BASE=${fixture}`,
      '--platform',
      'linux/amd64,linux/arm64',
      '-o',
      `type=registry,name=${name}`,
    ]);
    expect(res.code, res.stderr).toBe(0);
    expect(res.stderr).toMatch(/^pushed .*kiln\/pushed:.* \(sha256:[0-9a-f]{64}\)$/m);
    const { stdout } = await run('skopeo', [
      'inspect',
      '--raw',
      '--tls-verify=false',
      `docker://${name}`,
    ]);
    const index = JSON.parse(stdout) as { manifests: { platform?: { architecture: string } }[] };
    expect(index.manifests.map((m) => m.platform?.architecture).sort()).toEqual(['amd64', 'arm64']);
    // The arm64 image is complete in the registry: its config says so.
    const { stdout: cfg } = await run('skopeo', [
      'inspect',
      '--config',
      '--tls-verify=false',
      '--override-arch',
      'arm64',
      `docker://${name}`,
    ]);
    expect((JSON.parse(cfg) as { architecture: string }).architecture).toBe('arm64');
  }, 180_000);

  it('--no-cache reruns every step; without it a rebuild is all CACHED', async () => {
    const ctx = join(work, 'nocache', 'ctx');
    await cp(join(corpusDir, 'stages'), ctx, { recursive: true });
    const args = ['build', ctx, '--progress', 'plain', '--build-arg', `BASE=${fixture}`];
    expect((await kiln(args)).code).toBe(0);
    const cached = await kiln(args);
    expect(cached.stderr).toMatch(/CACHED/);
    expect(cached.stderr).not.toMatch(/DONE/);
    const fresh = await kiln([...args, '--no-cache']);
    expect(fresh.code, fresh.stderr).toBe(0);
    // Every step reruns; the base image (pinned by digest when resolved) may be CACHED, as in
    // BuildKit, where --no-cache does not re-pull a FROM.
    const cachedSteps = [...fresh.stderr.matchAll(/^#(\d+) CACHED$/gm)].map((m) => m[1]);
    for (const n of cachedSteps)
      expect(fresh.stderr, fresh.stderr).toMatch(new RegExp(`^#${n} \\[[^\\]]+\\] FROM `, 'm'));
    const step = /^#(\d+) \[one 2\/2\] RUN echo one > \/one.txt$/m.exec(fresh.stderr)?.[1];
    expect(step, fresh.stderr).toBeDefined();
    expect(fresh.stderr).toMatch(new RegExp(`^#${step} DONE`, 'm'));
  }, 180_000);
});

/**
 * The same `kiln build`, through a farm of real processes (`--addr`): a scheduler with the content
 * store, an amd64 worker and an arm64 worker running through qemu. The context, secrets and the
 * ssh agent reach the workers through the session; the outputs come back over it.
 */
describe('kiln build --addr: a farm of scheduler and worker processes', () => {
  let tmp: { dir: string; remove: () => void };
  let nats: NatsServerHandle;
  const procs: { proc: { stop(ms?: number): Promise<unknown> } }[] = [];
  let addr: string;

  beforeAll(async () => {
    tmp = makeTempDir('remote-build');
    const entries = await bundleEntries(tmp.dir);
    // The bus as a deployed farm runs it: a user per role, with the role's permissions.
    const workers = ['remote-amd64', 'remote-arm64'];
    nats = await startNats({ auth: { workers } });
    const auth = nats.auth;
    if (!auth) throw new Error('nats-server started without auth');
    const storeDir = join(tmp.dir, 'store');
    const scheduler = await startScheduler(entries, nats.url, {
      env: { KILN_STORE_DIR: storeDir, ...natsAuthEnv(auth.scheduler) },
    });
    procs.push(scheduler);
    addr = scheduler.addr;
    for (const [id, platform] of [
      ['remote-amd64', 'linux/amd64'],
      ['remote-arm64', 'linux/arm64=emulated'],
    ] as const) {
      procs.push(
        await startWorker(entries, nats.url, {
          id,
          stateDir: join(tmp.dir, id),
          storeDir,
          args: ['--platform', platform, '--slots', '2'],
          env: natsAuthEnv(auth.workers[id]),
        }),
      );
    }
    const client = await KilnClient.connect(addr);
    try {
      await waitForWorkers(client, ['remote-amd64', 'remote-arm64']);
    } finally {
      client.close();
    }
  }, 120_000);

  afterAll(async () => {
    await Promise.all(procs.map((p) => p.proc.stop(10_000)));
    await nats?.stop();
    tmp?.remove();
  });

  // Context files, secret and ssh mounts, a failing step shown with its lines, an arm64 build.
  for (const name of ['copy', 'run-mounts', 'run-fails', 'platform-arm64'])
    it(name, () => runCase(name, ['--addr', addr], `remote-${name}`), 180_000);
});
