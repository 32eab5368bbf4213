/**
 * `kiln build` flags with buildx's meaning: --push, --load (a clear error without a docker
 * engine), --label, --iidfile, --metadata-file, -q, --progress rawjson|quiet, --add-host,
 * --no-cache-filter, --pull, --network default, a bad --label, and the image config's `created`
 * (SOURCE_DATE_EPOCH). Real processes: the local farm daemon bundled from source, its nats-server
 * and crun, the harness's registry with the fixture busybox image; the CLI runs in-process.
 */
import { execFile } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { waitFor } from '../harness/index.js';
import { localFarmSuite } from './local-farm-suite.js';
import { runKiln } from './run-kiln.js';
import { describe, expect, it } from 'vitest';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE;
const registry = process.env.KILN_TEST_REGISTRY;
const run = promisify(execFile);

const suite = localFarmSuite('buildx-flags');
const { context, build } = suite;
let n = 0;

interface ImageConfig {
  created?: string;
  config: { Labels?: Record<string, string> };
  history: { created?: string }[];
}
interface Manifest {
  config: { digest: string };
  manifests?: { digest: string }[];
}

/** The image config inside an OCI tar (one platform). */
async function ociConfig(file: string): Promise<{ digest: string; config: ImageConfig }> {
  const dir = join(suite.dir(), `oci${n++}`);
  await mkdir(dir);
  await run('tar', ['-xf', file, '-C', dir]);
  const blob = async <T>(d: string): Promise<T> =>
    JSON.parse(await readFile(join(dir, 'blobs', ...d.split(':')), 'utf8')) as T;
  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as {
    manifests: { digest: string }[];
  };
  let m = await blob<Manifest>(index.manifests[0]!.digest);
  if (m.manifests) m = await blob<Manifest>(m.manifests[0]!.digest);
  return { digest: m.config.digest, config: await blob<ImageConfig>(m.config.digest) };
}

/** A --metadata-file's content. */
async function metadata(file: string): Promise<Record<string, string>> {
  return JSON.parse(await readFile(file, 'utf8')) as Record<string, string>;
}

describe('kiln build flags', () => {
  it('--label, --iidfile, --metadata-file and -t on an oci output; the config has created', async () => {
    const ctx = await context({ Dockerfile: 'ARG BASE\nFROM ${BASE}\nRUN echo hi > /hi\n' });
    const oci = join(suite.dir(), 'img.tar');
    const iid = join(suite.dir(), 'iid');
    const md = join(suite.dir(), 'md.json');
    const r = await build(
      ctx,
      '-t',
      'example.com/app:1',
      '--label',
      'org.example.k=v',
      '-o',
      `type=oci,dest=${oci}`,
      '--iidfile',
      iid,
      '--metadata-file',
      md,
    );
    expect(r.out).not.toContain('ERROR');
    expect(r.code).toBe(0);
    const { digest, config } = await ociConfig(oci);
    expect(config.config.Labels).toMatchObject({ 'org.example.k': 'v' });
    // As BuildKit v0.11.6: an image on a base keeps the base's created (the fixture's is 1970).
    expect(config.created).toBe('1970-01-01T00:00:00Z');
    expect(await readFile(iid, 'utf8')).toBe(digest);
    const meta = await metadata(md);
    expect(meta['containerimage.config.digest']).toBe(digest);
    expect(meta['containerimage.digest']).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(meta['image.name']).toBe('example.com/app:1');
  });

  it('an image from scratch is created when built, or at SOURCE_DATE_EPOCH', async () => {
    const ctx = await context({ Dockerfile: 'FROM scratch\nCOPY Dockerfile /d\n' });
    const now = join(suite.dir(), 'now.tar');
    const before = Date.now();
    expect((await build(ctx, '-o', `type=oci,dest=${now}`)).code).toBe(0);
    const built = (await ociConfig(now)).config;
    expect(Date.parse(built.created ?? '')).toBeGreaterThanOrEqual(before - 1000);
    const oci = join(suite.dir(), 'sde.tar');
    const r = await build(
      ctx,
      '--build-arg',
      'SOURCE_DATE_EPOCH=1700000000',
      '-o',
      `type=oci,dest=${oci}`,
    );
    expect(r.code).toBe(0);
    const { config } = await ociConfig(oci);
    expect(config.created).toBe('2023-11-14T22:13:20Z');
    expect(config.history.map((h) => h.created)).toEqual(['2023-11-14T22:13:20Z']);
  });

  it('-q prints only the image id; --progress rawjson prints status frames as JSON lines', async () => {
    const ctx = await context({ Dockerfile: 'ARG BASE\nFROM ${BASE}\nRUN echo q > /q\n' });
    const oci = join(suite.dir(), 'q.tar');
    const q = await build(ctx, '-q', '-o', `type=oci,dest=${oci}`);
    expect(q.code).toBe(0);
    expect(q.out).toBe(`${(await ociConfig(oci)).digest}\n`);
    const raw = await build(ctx, '--progress', 'rawjson', '--progress', 'rawjson');
    expect(raw.code).toBe(0);
    const frames = raw.out
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { vertexes?: { name?: string }[] });
    expect(frames.some((f) => f.vertexes?.some((v) => v.name?.includes('RUN echo q')))).toBe(true);
    const quiet = await build(ctx, '--progress', 'quiet');
    expect(quiet.code).toBe(0);
    expect(quiet.out).toBe('');
  });

  it('--push pushes the image named by -t; --load without a docker engine fails at once', async () => {
    const ctx = await context({ Dockerfile: 'ARG BASE\nFROM ${BASE}\nRUN echo pushed > /p\n' });
    const ref = `${registry}/buildx-flags/push-${process.pid}:v1`;
    const md = join(suite.dir(), 'push.json');
    const r = await build(ctx, '-t', ref, '--push', '--metadata-file', md);
    expect(r.code).toBe(0);
    const meta = await metadata(md);
    expect(meta['image.name']).toBe(ref);
    const res = await fetch(`http://${registry}/v2/buildx-flags/push-${process.pid}/manifests/v1`, {
      headers: {
        accept:
          'application/vnd.oci.image.manifest.v1+json,application/vnd.oci.image.index.v1+json',
      },
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-content-digest')).toBe(meta['containerimage.digest']);
    const noTag = await build(ctx, '--push');
    expect(noTag.code).toBe(1);
    expect(noTag.out).toContain('--push needs an image name');
    const load = await runKiln(['build', ctx, '--load', '-t', 'x'], {
      DOCKER_HOST: `unix://${join(suite.dir(), 'no-docker.sock')}`,
    });
    expect(load.code).toBe(1);
    expect(load.out).toContain(
      `--load: no docker engine reachable at unix://${join(suite.dir(), 'no-docker.sock')} (ENOENT)`,
    );
  });

  it('--load posts the docker tar to the engine (a fake docker engine: no real one runs here)', async () => {
    const ctx = await context({ Dockerfile: 'ARG BASE\nFROM ${BASE}\nRUN echo loaded > /l\n' });
    const sock = join(suite.dir(), 'fake-docker.sock');
    const loads: Buffer[] = [];
    const fakeDockerEngine = createServer((req, res) => {
      const body: Buffer[] = [];
      req.on('data', (d: Buffer) => body.push(d));
      req.on('end', () => {
        if (req.url === '/_ping') res.end('OK');
        else if (req.method === 'POST' && req.url?.startsWith('/images/load')) {
          loads.push(Buffer.concat(body));
          res.end('{"stream":"Loaded image: kiln-load-test:v1\\n"}');
        } else {
          res.statusCode = 404;
          res.end('{}');
        }
      });
    });
    await new Promise<void>((r) => fakeDockerEngine.listen(sock, r));
    try {
      const r = await runKiln(
        [
          'build',
          ctx,
          '--progress',
          'plain',
          '--build-arg',
          `BASE=${fixture}`,
          '--load',
          '-t',
          'kiln-load-test:v1',
        ],
        { DOCKER_HOST: `unix://${sock}` },
      );
      expect(r.code).toBe(0);
      expect(r.out).toContain('loaded into the docker engine: kiln-load-test:v1');
      expect(loads).toHaveLength(1);
      const tar = join(suite.dir(), 'loaded.tar');
      await writeFile(tar, loads[0]!);
      const manifest = JSON.parse((await run('tar', ['-xOf', tar, 'manifest.json'])).stdout) as {
        RepoTags?: string[];
      }[];
      expect(manifest[0]?.RepoTags).toContain('kiln-load-test:v1');
    } finally {
      await new Promise((r) => fakeDockerEngine.close(r));
    }
  });

  it('--add-host, --no-cache-filter, --pull and --network default', async () => {
    const ctx = await context({
      Dockerfile:
        'ARG BASE\nFROM ${BASE} AS one\nRUN grep kiln-test-host /etc/hosts > /hosts\nFROM one AS two\nRUN echo two > /two\nFROM scratch\nCOPY --from=two /hosts /two /\n',
    });
    const out = join(suite.dir(), 'hosts-out');
    const r = await build(
      ctx,
      '--add-host',
      'kiln-test-host:10.1.2.3',
      '-o',
      `type=local,dest=${out}`,
    );
    expect(r.code).toBe(0);
    expect(await readFile(join(out, 'hosts'), 'utf8')).toMatch(/^10\.1\.2\.3\s+kiln-test-host$/m);
    const again = await build(
      ctx,
      '--add-host',
      'kiln-test-host:10.1.2.3',
      '--no-cache-filter',
      'two',
      '--pull',
      '--network',
      'default',
    );
    expect(again.code).toBe(0);
    expect(again.out).toMatch(/RUN grep kiln-test-host[^\n]*\n#\d+ CACHED/);
    expect(again.out).not.toMatch(/RUN echo two[^\n]*\n#\d+ CACHED/);
  });

  it("kiln ls lists the farm's worker: id, status, slots, platforms (table, json, -v, filter)", async () => {
    // The farm is up from the builds above. Its registration is rewritten at each heartbeat
    // (every second): one written while the last build's task ran still counts its slot.
    type Row = {
      id: string;
      status: string;
      slots: number;
      busySlots: number;
      platforms: string[];
    };
    const rows = await waitFor(
      'kiln ls to show the worker idle',
      async () => {
        const json = await runKiln(['ls', '--format', 'json']);
        expect(json.code).toBe(0);
        const r = JSON.parse(json.out) as Row[];
        return r.length === 1 && r[0]!.busySlots === 0 ? r : undefined;
      },
      { intervalMs: 200 },
    );
    expect(rows).toHaveLength(1);
    const w = rows[0]!;
    expect(w.id).toBe('local');
    expect(w.status).toBe('running');
    expect(w.slots).toBe(Math.max(16, 4 * availableParallelism()));
    expect(w.busySlots).toBe(0);
    expect(w.platforms).toContain(`linux/${process.arch === 'x64' ? 'amd64' : process.arch}`);
    const table = await runKiln(['ls']);
    expect(table.code).toBe(0);
    const [head, row, ...rest] = table.out.trimEnd().split('\n');
    expect(head!.split(/\t+/)).toEqual(['ID', 'STATUS', 'SLOTS', 'PLATFORMS']);
    expect(row!.split(/\t+/).slice(0, 3)).toEqual(['local', 'running', `0/${w.slots}`]);
    expect(rest).toEqual([]);
    const verbose = await runKiln(['ls', '-v']);
    expect(verbose.out).toMatch(/^ID:\t\tlocal$/m);
    expect(verbose.out).toMatch(/^Heartbeat:\t\d+ seconds? ago$/m);
    const none = await runKiln(['ls', '--filter', 'id==nobody', '--format', 'json']);
    expect(JSON.parse(none.out)).toEqual([]);
    const bad = await runKiln(['ls', '--format', 'yaml']);
    expect(bad.code).toBe(1);
    expect(bad.out).toContain('--format yaml: want table or json');
  });

  it('--annotation: manifest annotations (all, or one platform) and the index of several platforms', async () => {
    const ctx = await context({ Dockerfile: 'FROM scratch\nCOPY Dockerfile /d\n' });
    const oci = join(suite.dir(), 'annotated.tar');
    const r = await build(
      ctx,
      '--platform',
      'linux/amd64,linux/arm64',
      '--annotation',
      'index:org.opencontainers.image.title=kiln-test',
      '--annotation',
      'org.example.all=1',
      '--annotation',
      'manifest[linux/arm64]:org.example.arm=yes',
      '-o',
      `type=oci,dest=${oci}`,
    );
    expect(r.out).not.toContain('ERROR');
    expect(r.code).toBe(0);
    const dir = join(suite.dir(), 'annotated');
    await mkdir(dir);
    await run('tar', ['-xf', oci, '-C', dir]);
    const blob = async <T>(d: string): Promise<T> =>
      JSON.parse(await readFile(join(dir, 'blobs', ...d.split(':')), 'utf8')) as T;
    const top = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as Manifest;
    const index = await blob<{
      annotations?: Record<string, string>;
      manifests: { digest: string; platform: { architecture: string } }[];
    }>(top.manifests![0]!.digest);
    expect(index.annotations).toEqual({ 'org.opencontainers.image.title': 'kiln-test' });
    const byArch: Record<string, Record<string, string> | undefined> = {};
    for (const m of index.manifests)
      byArch[m.platform.architecture] = (
        await blob<{ annotations?: Record<string, string> }>(m.digest)
      ).annotations;
    expect(byArch).toEqual({
      amd64: { 'org.example.all': '1' },
      arm64: { 'org.example.all': '1', 'org.example.arm': 'yes' },
    });
    // One platform has no index; a local output no manifest.
    const one = await build(ctx, '--annotation', 'index:a=b', '-o', `type=oci,dest=${oci}.1`);
    expect(one.code).toBe(1);
    expect(one.out).toContain('index annotations need an index');
    const local = await build(ctx, '--annotation', 'a=b', '-o', join(suite.dir(), 'ann-local'));
    expect(local.code).toBe(1);
    expect(local.out).toContain('--annotation needs an image output');
  });

  it('refuses a --label without a value, saying why', async () => {
    const ctx = await context({ Dockerfile: 'ARG BASE\nFROM ${BASE}\n' });
    const r = await build(ctx, '--label', 'novalue');
    expect(r.code).toBe(1);
    expect(r.out).toContain('--label "novalue": want KEY=VALUE');
  });
});
