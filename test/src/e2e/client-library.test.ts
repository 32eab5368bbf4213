/**
 * The client library's high-level API (`client.build`) and its README: every example file of
 * `libs/client/examples/` is in the README verbatim (so the README's code is the code that
 * compiles: `tsc -b` typechecks the examples), and each runs as its own program (bundled from
 * source) against a real local farm (its daemon bundled from source, its nats-server, crun, the
 * fixture busybox image), its outputs checked. Then `client.build`'s contract in-process: typed
 * progress events, outputs written before it resolves, option errors before the farm is asked,
 * a throwing `onProgress` or an abort ending the build, the session closed either way.
 */
import { execFile } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import {
  createWriteStream,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { KilnClient } from '@kiln/client';
import type { ProgressEvent } from '@kiln/client';
import { copy, image, local, marshal } from '@kiln/llb';
import { KilnError } from '@kiln/protocol';
import { REPO_ROOT, bundleEntries, makeTempDir, ociRootfs, tarNames } from '../harness/index.js';
import { bundleFarmDaemon } from './local-farm-daemon.js';
import { runKiln } from './run-kiln.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE;
const run = promisify(execFile);
const EXAMPLES = join(REPO_ROOT, 'libs/client/examples');
const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex');

let tmp: { dir: string; remove: () => void };
let stateDir = '';
let addr = '';
let bundles: Record<string, string> = {};
let client: KilnClient;

const DOCKERFILE = (base: string): string =>
  `FROM ${base}\nARG GREETING\nCOPY hello.txt /hello.txt\n` +
  'RUN --mount=type=secret,id=token sh -c \'echo "$GREETING $(cat /run/secrets/token)" > /greeting\'\n';

/** A fresh working directory for one example: `app/` (a Dockerfile and its context), `src/`. */
function workdir(name: string): string {
  const d = join(tmp.dir, name);
  mkdirSync(join(d, 'app'), { recursive: true });
  mkdirSync(join(d, 'src'), { recursive: true });
  writeFileSync(join(d, 'app', 'Dockerfile'), DOCKERFILE(fixture!));
  writeFileSync(join(d, 'app', 'hello.txt'), 'hello from the context\n');
  writeFileSync(join(d, 'src', 'hello.txt'), '12345\n');
  return d;
}

/** Runs an example's bundle as a program in `cwd`, against the test's farm. */
async function example(name: string, cwd: string): Promise<{ stdout: string; stderr: string }> {
  return run(process.execPath, [bundles[name]!], {
    cwd,
    env: {
      ...process.env,
      KILN_ADDR: addr,
      API_TOKEN: 'tok3n',
      BASE_IMAGE: fixture!,
    },
    timeout: 240_000,
  });
}

beforeAll(async () => {
  if (!fixture)
    throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through the vitest global setup');
  tmp = makeTempDir('client-library');
  stateDir = join(tmp.dir, 'state');
  const daemon = await bundleFarmDaemon(join(tmp.dir, 'bundle'));
  const env = { KILN_STATE_DIR: stateDir, KILN_FARM_DAEMON: daemon };
  const started = await runKiln(['farm', 'start'], env);
  expect(started.code, started.out).toBe(0);
  addr = `unix:${join(stateDir, 'farm.sock')}`;
  const names = readdirSync(EXAMPLES).filter((f) => f.endsWith('.ts'));
  bundles = await bundleEntries(
    Object.fromEntries(names.map((f) => [f.slice(0, -3), `libs/client/examples/${f}`])),
    join(tmp.dir, 'examples'),
  );
  client = await KilnClient.connect(addr);
}, 180_000);

afterAll(async () => {
  client?.close();
  if (stateDir) await runKiln(['farm', 'stop'], { KILN_STATE_DIR: stateDir });
  tmp?.remove();
});

describe('the README of @kiln/client', () => {
  it('holds every example file verbatim, and no other TypeScript block', () => {
    const readme = readFileSync(join(REPO_ROOT, 'libs/client/README.md'), 'utf8');
    const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);
    const files = readdirSync(EXAMPLES)
      .filter((f) => f.endsWith('.ts'))
      .sort();
    expect(files.length).toBeGreaterThanOrEqual(3);
    const named = blocks.map((b) => /^\/\/ examples\/([\w-]+\.ts)/.exec(b)?.[1]);
    expect(named.sort()).toEqual(files);
    for (const [i, b] of blocks.entries())
      expect(b, named[i]).toBe(readFileSync(join(EXAMPLES, named[i]!), 'utf8'));
  });
});

describe('the examples, run against a farm', () => {
  it('build-dockerfile: files into ./out, a docker tarball to a stream, the secret used', async () => {
    const cwd = workdir('ex-dockerfile');
    const { stdout, stderr } = await example('build-dockerfile', cwd);
    expect(stdout).toMatch(/^build [0-9a-f-]{36} done$/m);
    // The plain printer (stderr is no terminal here): numbered steps, the RUN done.
    expect(stderr).toMatch(/^#\d+ \[3\/3\] RUN --mount=type=secret/m);
    expect(stderr).toMatch(/^#\d+ DONE \d+\.\ds$/m);
    expect(readFileSync(join(cwd, 'out', 'greeting'), 'utf8')).toBe('hello tok3n\n');
    expect(readFileSync(join(cwd, 'out', 'hello.txt'), 'utf8')).toBe('hello from the context\n');
    const names = await tarNames(readFileSync(join(cwd, 'app.tar')));
    expect(names).toContain('manifest.json');
  });

  it('build-llb: a local() source with no session id, an OCI tarball at a path', async () => {
    const cwd = workdir('ex-llb');
    const { stdout } = await example('build-llb', cwd);
    expect(stdout).toMatch(/^DONE .*wc -c.* \(\d+ ms\)$/m);
    expect(stdout).toMatch(/^CACHED |^DONE local:\/\/src/m);
    expect(stdout).toMatch(/^wrote \.\/image\.tar \(build [0-9a-f-]{36}\)$/m);
    // The image's root filesystem holds what the RUN computed from the local source.
    const [rootfs, ...more] = (await ociRootfs(join(cwd, 'image.tar'))).values();
    expect(more).toEqual([]);
    expect(rootfs?.get('src/hello.txt')?.data).toBe(sha256('12345\n'));
    expect(rootfs?.get('size')?.data).toBe(sha256('6\n'));
  });

  it('low-level: session, solve, status and exports by hand', async () => {
    const cwd = workdir('ex-low');
    const { stderr } = await example('low-level', cwd);
    expect(stderr).toMatch(/^#\d+ DONE/m);
    const names = await tarNames(readFileSync(join(cwd, 'out-0.tar')));
    expect(names).toContain('greeting');
  });
});

describe('client.build', () => {
  it('emits typed events (numbers and strings), then resolves with everything written', async () => {
    const cwd = workdir('typed');
    const events: ProgressEvent[] = [];
    const res = await client.build({
      context: join(cwd, 'app'),
      buildArgs: { GREETING: 'typed' },
      secrets: { token: { value: 'v' } },
      noCache: true,
      outputs: [{ type: 'local', dest: join(cwd, 'out') }],
      onProgress: (e) => events.push(e),
    });
    expect(res.buildId).toMatch(/^[0-9a-f-]{36}$/);
    // Resolved means written: no wait for the files.
    expect(readFileSync(join(cwd, 'out', 'greeting'), 'utf8')).toBe('typed v\n');
    const done = events.filter((e) => e.type === 'vertex.completed');
    expect(done.length).toBeGreaterThan(0);
    for (const e of events) expect(typeof e.time).toBe('number');
    for (const e of done) expect(typeof e.durationMs).toBe('number');
    const logs = events.filter((e) => e.type === 'vertex.log');
    for (const l of logs) expect(typeof l.text).toBe('string');
    // Each vertex starts once and ends once, in that order.
    const seen = new Map<string, string[]>();
    for (const e of events)
      if (e.type !== 'vertex.log' && e.type !== 'vertex.status')
        seen.set(e.digest, [...(seen.get(e.digest) ?? []), e.type]);
    for (const [d, t] of seen)
      expect(t, d).toEqual(t[0] === 'vertex.cached' ? ['vertex.cached'] : [t[0], t[1]]);
  });

  it('has written the file digests it learnt when it resolves (digestCacheDir)', async () => {
    const cwd = workdir('digests');
    const dir = join(cwd, 'state', 'context-digests');
    await client.build({
      context: join(cwd, 'app'),
      secrets: { token: { value: 'v' } },
      outputs: [{ type: 'local', dest: join(cwd, 'out') }],
      digestCacheDir: dir,
    });
    // Saved off the listing's path, but before the build resolves: one file, the context's.
    const files = readdirSync(dir);
    expect(files).toHaveLength(1);
    const lines = readFileSync(join(dir, files[0]!), 'utf8').split('\n');
    expect(lines[0]).toBe(`kiln-context-digests v2\t${join(cwd, 'app')}`);
    expect(lines.some((l) => l.startsWith('hello.txt\t'))).toBe(true);
  });

  it('refuses bad options before the farm is asked: BUILD_OPTION_INVALID', async () => {
    const cwd = workdir('bad');
    const base = { context: join(cwd, 'app') };
    const code = (p: Promise<unknown>) =>
      p.then(
        () => 'resolved',
        (e: unknown) => (e instanceof KilnError ? e.code : String(e)),
      );
    delete process.env.KILN_TEST_UNSET_SECRET;
    expect(
      await code(client.build({ ...base, secrets: { t: { env: 'KILN_TEST_UNSET_SECRET' } } })),
    ).toBe('BUILD_OPTION_INVALID');
    expect(
      await code(client.build({ ...base, secrets: { t: { file: join(cwd, 'missing') } } })),
    ).toBe('BUILD_OPTION_INVALID');
    expect(await code(client.build({ ...base, platforms: ['linux/amd65'] }))).toBe(
      'BUILD_OPTION_INVALID',
    );
    expect(await code(client.build({ context: join(cwd, 'nothing-here') }))).toBe(
      'BUILD_OPTION_INVALID',
    );
  });

  it('several platforms: a directory per platform, a file per platform, one OCI index', async () => {
    const cwd = workdir('multi');
    writeFileSync(join(cwd, 'app', 'Dockerfile'), `FROM ${fixture!}\nRUN uname -m > /arch\n`);
    const streams: string[] = [];
    const res = await client.build({
      context: join(cwd, 'app'),
      platforms: ['linux/amd64', { os: 'linux', architecture: 'arm64' }],
      outputs: [
        { type: 'local', dest: join(cwd, 'out') },
        { type: 'docker', dest: join(cwd, 'img.tar') },
        {
          type: 'tar',
          dest: (platform) => {
            streams.push(platform);
            return createWriteStream(join(cwd, `fs-${platform.replace('/', '-')}.tar`));
          },
        },
        { type: 'oci', dest: join(cwd, 'index.tar') },
      ],
    });
    expect(res.exporterResponse['export.count']).toBe('7');
    expect(readFileSync(join(cwd, 'out', 'linux_amd64', 'arch'), 'utf8')).toBe('x86_64\n');
    expect(readFileSync(join(cwd, 'out', 'linux_arm64', 'arch'), 'utf8')).toBe('aarch64\n');
    for (const p of ['linux_amd64', 'linux_arm64'])
      expect(await tarNames(readFileSync(join(cwd, `img.tar.${p}`)))).toContain('manifest.json');
    expect(streams.sort()).toEqual(['linux/amd64', 'linux/arm64']);
    expect(await tarNames(readFileSync(join(cwd, 'fs-linux-arm64.tar')))).toContain('arch');
    expect(await tarNames(readFileSync(join(cwd, 'index.tar')))).toContain('index.json');
    // One stream cannot take an artifact per platform: said before the build.
    const err = await client
      .build({
        context: join(cwd, 'app'),
        platforms: ['linux/amd64', 'linux/arm64'],
        outputs: [{ type: 'docker', dest: createWriteStream(join(cwd, 'one.tar')) }],
      })
      .catch((e: unknown) => e);
    expect((err as KilnError).code).toBe('BUILD_OPTION_INVALID');
  });

  it('attest: provenance and SBOM attestation manifests on an oci output', async () => {
    const cwd = workdir('attest');
    writeFileSync(join(cwd, 'app', 'Dockerfile'), `FROM ${fixture!}\nRUN echo a > /a\n`);
    const dest = join(cwd, 'img.tar');
    await client.build({
      context: join(cwd, 'app'),
      attest: { provenance: 'min', sbom: true },
      outputs: [{ type: 'oci', dest, name: 'example.com/attest:1' }],
    });
    const dir = join(cwd, 'layout');
    mkdirSync(dir);
    await run('tar', ['-xf', dest, '-C', dir]);
    const blob = (d: string): { manifests: { annotations?: Record<string, string> }[] } =>
      JSON.parse(readFileSync(join(dir, 'blobs/sha256', d.slice(7)), 'utf8')) as {
        manifests: { annotations?: Record<string, string> }[];
      };
    const top = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8')) as {
      manifests: { digest: string }[];
    };
    const index = blob(top.manifests[0]!.digest);
    expect(index.manifests.map((m) => m.annotations?.['vnd.docker.reference.type'])).toEqual([
      undefined,
      'attestation-manifest',
    ]);
    const err = await client
      .build({
        context: join(cwd, 'app'),
        attest: { provenance: 'full' as 'max' },
        outputs: [{ type: 'oci', dest }],
      })
      .catch((e: unknown) => e);
    expect((err as KilnError).code).toBe('BUILD_OPTION_INVALID');
  });

  it('client.progress follows a low-level solve as the same typed events', async () => {
    const buildId = randomUUID();
    const events: ProgressEvent[] = [];
    const following = (async () => {
      for await (const e of client.progress(buildId)) events.push(e);
    })();
    await client.solve({
      buildId,
      definition: marshal(
        image(fixture!)
          .run({ args: ['sh', '-c', `echo ${buildId}`] })
          .root(),
      ),
    });
    await following;
    const log = events
      .filter((e) => e.type === 'vertex.log')
      .map((e) => e.text)
      .join('');
    expect(log).toBe(`${buildId}\n`);
    expect(events.filter((e) => e.type === 'vertex.completed').map((e) => e.name)).toContain(
      `sh -c echo ${buildId}`,
    );
  });

  it('a throwing onProgress ends the build with its error; nothing is written', async () => {
    const cwd = workdir('throws');
    const boom = new Error('renderer broke');
    const err = await client
      .build({
        definition: marshal(
          image(fixture!)
            .file(copy(local('src'), '/', '/src/'))
            .run({ args: ['sh', '-c', 'sleep 2; cat /proc/sys/kernel/random/uuid > /r'] })
            .root(),
        ),
        localDirs: { src: join(cwd, 'src') },
        outputs: [{ type: 'local', dest: join(cwd, 'out') }],
        onProgress: () => {
          throw boom;
        },
      })
      .catch((e: unknown) => e);
    expect(err).toBe(boom);
    expect(existsSync(join(cwd, 'out'))).toBe(false);
  });

  it('an aborted signal cancels the build: CANCELED', async () => {
    const cwd = workdir('abort');
    const ac = new AbortController();
    const err = await client
      .build({
        definition: marshal(
          image(fixture!)
            .run({ args: ['sh', '-c', 'sleep 60; cat /proc/sys/kernel/random/uuid > /r'] })
            .root(),
        ),
        outputs: [{ type: 'local', dest: join(cwd, 'out') }],
        onProgress: (e) => {
          if (e.type === 'vertex.started' && e.name.includes('sleep 60')) ac.abort();
        },
        signal: ac.signal,
      })
      .catch((e: unknown) => e);
    expect((err as KilnError).code).toBe('CANCELED');
    expect(existsSync(join(cwd, 'out'))).toBe(false);
  });
});
