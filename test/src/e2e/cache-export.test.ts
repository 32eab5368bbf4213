/**
 * `kiln build --cache-to type=local` / `--cache-from type=local` (BuildKit's local cache format):
 * a build exports its cache, the farm's whole state is thrown away (a fresh state dir: no bus
 * records, no store, no worker snapshots), and the same build with the exported cache imported
 * hits it for every step and gives the same output, including a file that a rerun would change.
 * Real processes: the local farm daemon, its nats-server, crun, the harness's registry.
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTempDir } from '../harness/index.js';
import { bundleFarmDaemon } from './local-farm-daemon.js';
import { cachedSteps } from './progress-log.js';
import { runKiln } from './run-kiln.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE;
const registry = process.env.KILN_TEST_REGISTRY;

let tmp: { dir: string; remove: () => void };
let ctx: string;

const buildIn = (dir: string, env: Record<string, string>, ...extra: string[]) =>
  runKiln(['build', dir, '--progress', 'plain', '--build-arg', `BASE=${fixture}`, ...extra], env);

const buildWith = (env: Record<string, string>, ...extra: string[]) => buildIn(ctx, env, ...extra);

const build = (stateDir: string, ...extra: string[]) =>
  buildWith({ KILN_STATE_DIR: stateDir }, ...extra);

const stop = (stateDir: string) => runKiln(['farm', 'stop'], { KILN_STATE_DIR: stateDir });

/** The cache config of a local cache (tag `latest`), after checking the layout names every blob. */
function localCacheConfig(cache: string): { records: { digest: string; layers?: unknown[] }[] } {
  // BuildKit's layout: index.json names an OCI index listing the layers and a cache config.
  const layout = JSON.parse(readFileSync(join(cache, 'index.json'), 'utf8')) as {
    manifests: { digest: string; annotations: Record<string, string> }[];
  };
  const desc = layout.manifests.find(
    (m) => m.annotations['org.opencontainers.image.ref.name'] === 'latest',
  );
  expect(desc).toBeDefined();
  const blob = (d: string) => join(cache, 'blobs', d.replace(':', '/'));
  const index = JSON.parse(readFileSync(blob(desc!.digest), 'utf8')) as {
    manifests: { mediaType: string; digest: string }[];
  };
  const config = index.manifests.find(
    (m) => m.mediaType === 'application/vnd.buildkit.cacheconfig.v0',
  );
  expect(config).toBeDefined();
  for (const m of index.manifests) expect(existsSync(blob(m.digest))).toBe(true);
  return JSON.parse(readFileSync(blob(config!.digest), 'utf8')) as {
    records: { digest: string; layers?: unknown[] }[];
  };
}

beforeAll(async () => {
  if (!fixture)
    throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through the vitest global setup');
  tmp = makeTempDir('cache-export');
  ctx = join(tmp.dir, 'ctx');
  process.env.KILN_FARM_DAEMON = await bundleFarmDaemon(join(tmp.dir, 'bundle'));
  await mkdir(ctx, { recursive: true });
  await writeFile(join(ctx, 'a.txt'), 'hello\n');
  // /stamp differs on every run of the RUN: equal outputs mean it did not run again.
  await writeFile(
    join(ctx, 'Dockerfile'),
    'ARG BASE\nFROM ${BASE}\nCOPY a.txt /a.txt\nRUN cat /a.txt > /b.txt && cat /proc/sys/kernel/random/uuid > /stamp\nRUN cp /stamp /stamp2\n',
  );
}, 120_000);

afterAll(async () => {
  for (const s of [
    'state1',
    'state2',
    'reg1',
    'reg2',
    'reg3',
    's3a',
    's3b',
    'mp1',
    'mp2',
    'rx1',
    'rx2',
    'rx3',
  ])
    await stop(join(tmp.dir, s));
  delete process.env.KILN_FARM_DAEMON;
  tmp?.remove();
});

describe('cache export and import', () => {
  it('round-trips through a fresh farm: every step CACHED, the same output', async () => {
    const cache = join(tmp.dir, 'cache');
    const state1 = join(tmp.dir, 'state1');
    const first = await build(
      state1,
      '--cache-to',
      `type=local,dest=${cache},mode=max`,
      '--output',
      `type=local,dest=${join(tmp.dir, 'out1')}`,
    );
    expect(first.code, first.out).toBe(0);
    await stop(state1);

    const cc = localCacheConfig(cache);
    expect(cc.records.filter((r) => r.layers).length).toBeGreaterThanOrEqual(3);

    const state2 = join(tmp.dir, 'state2');
    const second = await build(
      state2,
      // An import that cannot be read is shown failed and skipped, as buildctl does.
      '--cache-from',
      `type=local,src=${join(tmp.dir, 'no-such-cache')}`,
      '--cache-from',
      `type=local,src=${cache}`,
      '--output',
      `type=local,dest=${join(tmp.dir, 'out2')}`,
    );
    expect(second.code, second.out).toBe(0);
    const cached = cachedSteps(second.out);
    expect(second.out).toMatch(
      /#(\d+) importing cache manifest from local:\S*no-such-cache\n#\1 ERROR/,
    );
    expect(
      cached.some((n) => n.includes('COPY a.txt')),
      second.out,
    ).toBe(true);
    expect(
      cached.some((n) => n.includes('RUN cat /a.txt')),
      second.out,
    ).toBe(true);
    expect(
      cached.some((n) => n.includes('RUN cp /stamp')),
      second.out,
    ).toBe(true);
    for (const f of ['b.txt', 'stamp', 'stamp2'])
      expect(readFileSync(join(tmp.dir, 'out2', f), 'utf8')).toBe(
        readFileSync(join(tmp.dir, 'out1', f), 'utf8'),
      );

    // Without the import, the fresh farm runs the steps: the stamp changes (the test's control).
    const state3 = join(tmp.dir, 'state3');
    const third = await build(state3, '--output', `type=local,dest=${join(tmp.dir, 'out3')}`);
    await stop(state3);
    expect(third.code, third.out).toBe(0);
    expect(readFileSync(join(tmp.dir, 'out3', 'stamp'), 'utf8')).not.toBe(
      readFileSync(join(tmp.dir, 'out1', 'stamp'), 'utf8'),
    );
  }, 600_000);

  it('exports mode=max after an import: the steps the import made unnecessary keep their results', async () => {
    const [c1, c2] = [join(tmp.dir, 'rx-cache1'), join(tmp.dir, 'rx-cache2')];
    const out = (n: string) => join(tmp.dir, n);
    const first = await build(
      join(tmp.dir, 'rx1'),
      '--cache-to',
      `type=local,dest=${c1},mode=max`,
      '--output',
      `type=local,dest=${out('rx-out1')}`,
    );
    expect(first.code, first.out).toBe(0);
    await stop(join(tmp.dir, 'rx1'));
    // A fresh farm: the last step hits from its keys, so COPY and the first RUN never run; the
    // export has them anyway, with the results the import holds (as BuildKit exports them).
    const second = await build(
      join(tmp.dir, 'rx2'),
      '--cache-from',
      `type=local,src=${c1}`,
      '--cache-to',
      `type=local,dest=${c2},mode=max`,
      '--output',
      `type=local,dest=${out('rx-out2')}`,
    );
    expect(second.code, second.out).toBe(0);
    await stop(join(tmp.dir, 'rx2'));
    const withResults = (c: string) =>
      localCacheConfig(c)
        .records.filter((r) => r.layers)
        .map((r) => r.digest)
        .sort();
    expect(withResults(c2)).toEqual(withResults(c1));

    // From the re-export alone, a third fresh farm builds the Dockerfile with its last step
    // changed: that step runs, and the steps before it hit (the first RUN's /stamp is the
    // first build's: it did not run again).
    const ctx2 = join(tmp.dir, 'rx-ctx');
    await mkdir(ctx2, { recursive: true });
    await writeFile(join(ctx2, 'a.txt'), 'hello\n');
    const dockerfile = await readFile(join(ctx, 'Dockerfile'), 'utf8');
    await writeFile(
      join(ctx2, 'Dockerfile'),
      dockerfile.replace('RUN cp /stamp /stamp2', 'RUN cp /stamp /stamp3'),
    );
    const third = await buildIn(
      ctx2,
      { KILN_STATE_DIR: join(tmp.dir, 'rx3') },
      '--cache-from',
      `type=local,src=${c2}`,
      '--output',
      `type=local,dest=${out('rx-out3')}`,
    );
    expect(third.code, third.out).toBe(0);
    const cached = cachedSteps(third.out);
    for (const step of ['COPY a.txt', 'RUN cat /a.txt'])
      expect(
        cached.some((n) => n.includes(step)),
        `${step}\n${third.out}`,
      ).toBe(true);
    expect(cached.some((n) => n.includes('RUN cp /stamp /stamp3'))).toBe(false);
    expect(readFileSync(join(out('rx-out3'), 'stamp3'), 'utf8')).toBe(
      readFileSync(join(out('rx-out1'), 'stamp'), 'utf8'),
    );
  }, 600_000);

  it('round-trips through a registry: mode=max and mode=min both hit every step', async () => {
    const ref = (tag: string) => `${registry}/kiln-test/cache-${process.pid}:${tag}`;
    const out = (n: string) => join(tmp.dir, n);
    const first = await build(
      join(tmp.dir, 'reg1'),
      '--cache-to',
      `type=registry,ref=${ref('max')},mode=max`,
      '--cache-to',
      `type=registry,ref=${ref('min')}`,
      '--output',
      `type=local,dest=${out('r1')}`,
    );
    expect(first.code, first.out).toBe(0);
    await stop(join(tmp.dir, 'reg1'));

    const max = await build(
      join(tmp.dir, 'reg2'),
      '--cache-from',
      `type=registry,ref=${ref('max')}`,
      '--output',
      `type=local,dest=${out('r2')}`,
    );
    expect(max.code, max.out).toBe(0);
    const cachedMax = cachedSteps(max.out);
    for (const step of ['COPY a.txt', 'RUN cat /a.txt', 'RUN cp /stamp'])
      expect(
        cachedMax.some((n) => n.includes(step)),
        max.out,
      ).toBe(true);
    expect(readFileSync(join(out('r2'), 'stamp'), 'utf8')).toBe(
      readFileSync(join(out('r1'), 'stamp'), 'utf8'),
    );

    // mode=min holds the result's layers only, but the last step's key needs only the keys of
    // the steps before it: it hits from its keys alone and they never run (BuildKit's lazy solve),
    // shown CACHED; the output is the exported one, /stamp (the first RUN's) included.
    const min = await build(
      join(tmp.dir, 'reg3'),
      '--cache-from',
      ref('min'),
      '--output',
      `type=local,dest=${out('r3')}`,
    );
    expect(min.code, min.out).toBe(0);
    const cachedMin = cachedSteps(min.out);
    for (const step of ['COPY a.txt', 'RUN cat /a.txt', 'RUN cp /stamp'])
      expect(
        cachedMin.some((n) => n.includes(step)),
        min.out,
      ).toBe(true);
    for (const f of ['stamp', 'stamp2'])
      expect(readFileSync(join(out('r3'), f), 'utf8')).toBe(
        readFileSync(join(out('r1'), f), 'utf8'),
      );
  }, 600_000);

  it("round-trips through S3 in BuildKit's s3 layout (s3rver)", async () => {
    const e = process.env;
    const prefix = `kiln-test-${process.pid}/`;
    const spec = [
      'type=s3',
      `bucket=${e.KILN_TEST_S3_BUCKET}`,
      'region=us-east-1',
      `endpoint_url=${e.KILN_TEST_S3_ENDPOINT}`,
      'use_path_style=true',
      `prefix=${prefix}`,
      'name=app;app-latest',
    ].join(',');
    // Credentials from the client's environment, as buildx passes them.
    const aws = {
      AWS_ACCESS_KEY_ID: e.KILN_TEST_S3_ACCESS_KEY!,
      AWS_SECRET_ACCESS_KEY: e.KILN_TEST_S3_SECRET_KEY!,
    };
    const first = await buildWith(
      { KILN_STATE_DIR: join(tmp.dir, 's3a'), ...aws },
      '--cache-to',
      `${spec},mode=max`,
      '--output',
      `type=local,dest=${join(tmp.dir, 's1')}`,
    );
    expect(first.code, first.out).toBe(0);
    await stop(join(tmp.dir, 's3a'));
    const second = await buildWith(
      { KILN_STATE_DIR: join(tmp.dir, 's3b'), ...aws },
      '--cache-from',
      spec.replace('name=app;app-latest', 'name=app-latest'),
      '--output',
      `type=local,dest=${join(tmp.dir, 's2')}`,
    );
    expect(second.code, second.out).toBe(0);
    const cached = cachedSteps(second.out);
    for (const step of ['COPY a.txt', 'RUN cat /a.txt', 'RUN cp /stamp'])
      expect(
        cached.some((n) => n.includes(step)),
        second.out,
      ).toBe(true);
    expect(readFileSync(join(tmp.dir, 's2', 'stamp'), 'utf8')).toBe(
      readFileSync(join(tmp.dir, 's1', 'stamp'), 'utf8'),
    );
  }, 600_000);

  it('exports one cache holding every platform of a multi-platform build; importing hits each', async () => {
    const cache = join(tmp.dir, 'mpcache');
    const platforms = '--platform=linux/amd64,linux/arm64';
    const first = await build(
      join(tmp.dir, 'mp1'),
      platforms,
      '--cache-to',
      `type=local,dest=${cache},mode=max`,
      '--output',
      `type=local,dest=${join(tmp.dir, 'mp-out1')}`,
    );
    expect(first.code, first.out).toBe(0);
    await stop(join(tmp.dir, 'mp1'));
    const second = await build(
      join(tmp.dir, 'mp2'),
      platforms,
      '--cache-from',
      `type=local,src=${cache}`,
      '--output',
      `type=local,dest=${join(tmp.dir, 'mp-out2')}`,
    );
    expect(second.code, second.out).toBe(0);
    const cached = cachedSteps(second.out);
    for (const p of ['linux/amd64', 'linux/arm64'])
      for (const step of ['RUN cat /a.txt', 'RUN cp /stamp'])
        expect(
          cached.some((n) => n.includes(p) && n.includes(step)),
          `${p} ${step}\n${second.out}`,
        ).toBe(true);
    for (const p of ['linux_amd64', 'linux_arm64'])
      for (const f of ['stamp', 'stamp2'])
        expect(readFileSync(join(tmp.dir, 'mp-out2', p, f), 'utf8')).toBe(
          readFileSync(join(tmp.dir, 'mp-out1', p, f), 'utf8'),
        );
    // The two platforms are two results, not one written over the other (buildx#1044).
    expect(readFileSync(join(tmp.dir, 'mp-out1', 'linux_arm64', 'stamp'), 'utf8')).not.toBe(
      readFileSync(join(tmp.dir, 'mp-out1', 'linux_amd64', 'stamp'), 'utf8'),
    );
  }, 600_000);
});
