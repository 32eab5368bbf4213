/**
 * `kiln build --build-context` (named contexts: a local directory replacing a stage, an image
 * replacing a FROM and a COPY --from image) and the RUN sandbox flags `--network none|host`,
 * `--shm-size`, `--ulimit`, seen from inside the RUN (/proc). Real processes: the local farm
 * daemon bundled from source, its nats-server and crun, the harness's registry with the fixture
 * busybox image; the CLI runs in-process.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { localFarmSuite } from './local-farm-suite.js';
import { describe, expect, it } from 'vitest';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE;

const suite = localFarmSuite('buildx-contexts');
const { context, build } = suite;

describe('kiln build --build-context', () => {
  it('a local directory stands for a stage (whose commands never run), an image for FROM and COPY --from', async () => {
    const ctx = await context({
      Dockerfile: [
        // The stage a named context replaces: it would fail if it ran.
        'FROM scratch AS deps',
        'COPY no-such-file /',
        // FROM and COPY --from name images no registry has: the named contexts stand for them.
        'FROM kiln.invalid/base:1 AS tools',
        'RUN echo tools > /tools',
        'FROM kiln.invalid/base:1',
        'COPY --from=deps /lib.txt /deps/',
        'COPY --from=tools /tools /tools',
        'COPY --from=kiln.invalid/other /bin/busybox /copied-busybox',
        'RUN cat /deps/lib.txt /tools > /summary',
      ].join('\n'),
    });
    const deps = join(suite.dir(), 'deps-dir');
    await mkdir(deps);
    await writeFile(join(deps, 'lib.txt'), 'from the named context\n');
    const out = join(suite.dir(), 'named-out');
    const r = await build(
      ctx,
      '--build-context',
      `deps=${deps}`,
      '--build-context',
      `kiln.invalid/base:1=docker-image://${fixture}`,
      '--build-context',
      `kiln.invalid/other=docker-image://${fixture}`,
      '-o',
      `type=local,dest=${out}`,
    );
    expect(r.out).not.toContain('ERROR');
    expect(r.code).toBe(0);
    expect(r.out).toContain('[context deps] load from client');
    expect(r.out).toContain(`[context kiln.invalid/other] ${fixture}`);
    expect(await readFile(join(out, 'summary'), 'utf8')).toBe('from the named context\ntools\n');
    expect((await readFile(join(out, 'copied-busybox'))).length).toBeGreaterThan(100_000);
  });

  it('refuses what it cannot serve, before the build', async () => {
    const ctx = await context({ Dockerfile: 'ARG BASE\nFROM ${BASE}\n' });
    for (const [v, why] of [
      ['x', '--build-context "x": want NAME=VALUE'],
      [`x=${join(suite.dir(), 'missing')}`, 'ENOENT'],
      ['x=oci-layout://./layout', 'oci-layout://...: not supported'],
    ] as const) {
      const r = await build(ctx, '--build-context', v);
      expect(r.code).toBe(1);
      expect(r.out).toContain(why);
    }
  });
});

describe('kiln build --network, --shm-size, --ulimit', () => {
  const probe = [
    'ARG BASE',
    'FROM ${BASE}',
    'RUN cat /proc/net/dev > /net && grep " /dev/shm " /proc/mounts > /shm && cat /proc/self/limits > /limits',
    'FROM scratch',
    'COPY --from=0 /net /shm /limits /',
  ].join('\n');
  const interfaces = (dev: string): string[] =>
    dev
      .split('\n')
      .slice(2)
      .map((l) => l.split(':')[0]!.trim())
      .filter(Boolean)
      .sort();

  it('--network none leaves RUN only the loopback; --shm-size and --ulimit reach the RUN', async () => {
    const ctx = await context({ Dockerfile: probe });
    const out = join(suite.dir(), 'none-out');
    const r = await build(
      ctx,
      '--network',
      'none',
      '--shm-size',
      '96m',
      '--ulimit',
      'nofile=1024:2048',
      '--ulimit',
      'nproc=3000',
      '-o',
      `type=local,dest=${out}`,
    );
    expect(r.out).not.toContain('ERROR');
    expect(r.code).toBe(0);
    expect(interfaces(await readFile(join(out, 'net'), 'utf8'))).toEqual(['lo']);
    expect(await readFile(join(out, 'shm'), 'utf8')).toMatch(/\bsize=98304k\b/);
    const limits = await readFile(join(out, 'limits'), 'utf8');
    expect(limits).toMatch(/^Max open files\s+1024\s+2048\s+files\s*$/m);
    expect(limits).toMatch(/^Max processes\s+3000\s+3000\s+processes\s*$/m);
  });

  it('--network host gives RUN the host network (the local farm grants network.host)', async () => {
    const ctx = await context({ Dockerfile: probe });
    const out = join(suite.dir(), 'host-out');
    const r = await build(ctx, '--network', 'host', '-o', `type=local,dest=${out}`);
    expect(r.out).not.toContain('ERROR');
    expect(r.code).toBe(0);
    // The host's own interfaces (not the veths other containers come and go with).
    const host = interfaces(await readFile('/proc/net/dev', 'utf8')).filter(
      (i) => !/^(vk|veth)/.test(i),
    );
    expect(host.length).toBeGreaterThan(1);
    expect(interfaces(await readFile(join(out, 'net'), 'utf8'))).toEqual(
      expect.arrayContaining(host),
    );
  });

  it('refuses bad values', async () => {
    const ctx = await context({ Dockerfile: 'ARG BASE\nFROM ${BASE}\n' });
    for (const [flag, v, why] of [
      ['--network', 'bridge', '--network bridge: want default, none or host'],
      ['--shm-size', 'lots', '--shm-size "lots": want a size such as 64m or 1g'],
      ['--ulimit', 'nofile', '--ulimit "nofile": want NAME=SOFT[:HARD]'],
      ['--ulimit', 'nofiles=1', 'invalid ulimit type: nofiles'],
    ] as const) {
      const r = await build(ctx, flag, v);
      expect(r.code).toBe(1);
      expect(r.out).toContain(why);
    }
  });
});
