import { describe, expect, it } from 'vitest';
import { parseDefinition } from '@kiln/llb';
import {
  convertOptionsFromAttrs,
  getFrontend,
  listFrontends,
  registerFrontend,
} from './frontend.js';
import type { Frontend } from './frontend.js';
import { parse } from './parser/parser.js';
import { fixedResolver } from './test-support/llb-inspect.js';
import { generateDockerfile } from '@kiln/testing';

describe('frontend registry', () => {
  it('has dockerfile.v0 by default and takes new frontends by name', async () => {
    expect(listFrontends()).toContain('dockerfile.v0');
    const echo: Frontend = {
      name: 'test.echo.v0',
      solve: (inputs) =>
        Promise.resolve({
          platforms: [
            {
              platform: { os: 'linux', architecture: 'amd64' },
              definition: undefined as never,
              imageConfig: {
                architecture: String(inputs.opts.arch),
                os: 'linux',
                config: {},
                rootfs: { type: 'layers', diff_ids: [] },
              },
              imageConfigJson: '',
            },
          ],
        }),
    };
    registerFrontend(echo);
    expect(getFrontend('test.echo.v0')).toBe(echo);
    expect(getFrontend('nope')).toBeUndefined();
    const res = await getFrontend('test.echo.v0')!.solve({ dockerfile: '', opts: { arch: 'x' } });
    expect(res.platforms[0]!.imageConfig.architecture).toBe('x');
  });

  it('reads BuildKit’s frontend attributes', () => {
    expect(
      convertOptionsFromAttrs({
        'build-arg:A': '1',
        'build-arg:B': '',
        target: 'final',
        platform: 'linux/amd64, linux/arm64/v8',
        filename: 'Dockerfile',
        'no-cache': 'a,b',
        'label:l': 'v',
        context: 'ctx',
      }),
    ).toEqual({
      buildArgs: { A: '1', B: '' },
      labels: { l: 'v' },
      target: 'final',
      targetPlatforms: [
        { os: 'linux', architecture: 'amd64' },
        { os: 'linux', architecture: 'arm64' },
      ],
      ignoreCache: ['a', 'b'],
      contextName: 'ctx',
    });
    expect(convertOptionsFromAttrs({ 'no-cache': '' }).ignoreCache).toBe(true);
    expect(
      convertOptionsFromAttrs({
        'image-resolve-mode': 'pull',
        hostname: 'h',
        'add-hosts': 'db=10.0.0.2,V6=::1',
      }),
    ).toMatchObject({
      imageResolveMode: 'pull',
      hostname: 'h',
      extraHosts: [
        { host: 'db', ip: '10.0.0.2' },
        { host: 'v6', ip: '::1' },
      ],
    });
    expect(() => convertOptionsFromAttrs({ 'add-hosts': 'db' })).toThrow(
      'invalid key-value pair db',
    );
    expect(() => convertOptionsFromAttrs({ 'add-hosts': 'db=x' })).toThrow('failed to parse IP x');
    expect(() => convertOptionsFromAttrs({ platform: 'linux/' })).toThrow(
      'invalid platform "linux/"',
    );
  });

  it('dockerfile.v0 solves per platform: definitions, configs, .dockerignore, no-cache', async () => {
    const fe = getFrontend('dockerfile.v0')!;
    const res = await fe.solve({
      dockerfile: Buffer.from(
        'FROM busybox AS a\nARG TARGETARCH\nRUN echo $TARGETARCH $V\nCOPY . /src\nFROM a AS b\nRUN echo b\n',
      ),
      dockerignore: '# comment\nnode_modules\n!node_modules/keep\n',
      opts: {
        platform: 'linux/amd64,linux/arm64',
        'build-arg:V': 'v1',
        target: 'a',
        'no-cache': '',
        'label:x': 'y',
      },
      metaResolver: fixedResolver(),
      sessionId: 's1',
    });
    expect(res.platforms.map((p) => p.platform.architecture)).toEqual(['amd64', 'arm64']);
    for (const p of res.platforms) {
      const loaded = parseDefinition(p.definition.toBytes());
      const ops = loaded.order.map((d) => ({
        op: loaded.ops.get(d)!.op,
        md: loaded.ops.get(d)!.metadata,
      }));
      const run = ops.find((o) => o.op.exec)!;
      expect(run.op.exec!.meta!.args).toEqual(['/bin/sh', '-c', `echo $TARGETARCH $V`]);
      expect(run.op.exec!.meta!.env).toContain(`TARGETARCH=${p.platform.architecture}`);
      expect(run.md?.ignoreCache).toBe(true);
      expect(run.md?.description?.['llb.customname']).toBe(
        `[linux/${p.platform.architecture} a 2/3] RUN echo ${p.platform.architecture} $V`,
      );
      const ctx = ops.find((o) => o.op.source?.identifier === 'local://context')!;
      expect(ctx.op.source!.attrs).toEqual({
        'local.excludepatterns': '["node_modules","!node_modules/keep"]',
        'local.session': 's1',
        'local.sharedkeyhint': 'context',
      });
      expect(p.imageConfig.config.Labels).toEqual({ x: 'y' });
      expect(JSON.parse(p.imageConfigJson)).toMatchObject({
        architecture: p.platform.architecture,
        os: 'linux',
      });
      expect(ops.some((o) => o.op.exec?.meta?.args?.includes('echo b'))).toBe(false);
    }
  });
});

describe('stages based on stages', () => {
  it('builds a chain of stages, each inheriting its base stage’s config', async () => {
    // Once failed with "Cannot read properties of undefined (reading 'config')": c was
    // initialised before b, whose image it copies.
    const res = await getFrontend('dockerfile.v0')!.solve({
      dockerfile: Buffer.from(
        'FROM busybox AS a\nENV A=1\nFROM a AS b\nENV B=2\nFROM b AS c\nENV C=3\nRUN echo c\n',
      ),
      opts: {},
      metaResolver: fixedResolver(),
      sessionId: 's1',
    });
    const [p] = res.platforms;
    expect(p?.imageConfig.config.Env).toEqual(expect.arrayContaining(['A=1', 'B=2', 'C=3']));
    const loaded = parseDefinition(p!.definition.toBytes());
    const run = [...loaded.ops.values()].find((o) => o.op.exec)!;
    expect(run.op.exec!.meta!.env).toEqual(expect.arrayContaining(['A=1', 'B=2', 'C=3']));
  });
});

describe('generateDockerfile (the convert benchmark input)', () => {
  it('generates a 500-instruction Dockerfile that parses', () => {
    expect(parse(generateDockerfile(500)).ast.children).toHaveLength(500);
  });
});

describe('RUN sandbox attributes (buildx --network, --shm-size, --ulimit)', () => {
  const execsOf = async (
    opts: Record<string, string>,
    df: string,
  ): Promise<
    {
      network: number;
      ulimit: { Name?: string | null; Soft?: unknown; Hard?: unknown }[];
      mounts: { dest: string; size: number }[];
    }[]
  > => {
    const res = await getFrontend('dockerfile.v0')!.solve({
      dockerfile: df,
      opts,
      metaResolver: fixedResolver(),
    });
    const loaded = parseDefinition(res.platforms[0]!.definition.toBytes());
    return [...loaded.ops.values()]
      .filter((o) => o.op.exec)
      .map((o) => ({
        network: o.op.exec!.network ?? 0,
        ulimit: o.op.exec!.meta?.ulimit ?? [],
        mounts: (o.op.exec!.mounts ?? []).map((m) => ({
          dest: m.dest ?? '',
          size: Number(m.TmpfsOpt?.size ?? 0),
        })),
      }));
  };

  it('forces the network of RUNs without their own, mounts /dev/shm, sets rlimits', async () => {
    const execs = await execsOf(
      {
        'force-network-mode': 'none',
        'shm-size': '134217728',
        ulimit: 'nofile=1024:2048,nproc=512',
      },
      'FROM busybox\nRUN a\nRUN --network=host b\n',
    );
    expect(execs.map((e) => e.network).sort()).toEqual([1, 2]);
    for (const e of execs) {
      expect(e.mounts).toContainEqual({ dest: '/dev/shm', size: 134217728 });
      expect(e.ulimit.map((u) => [u.Name, Number(u.Soft), Number(u.Hard)])).toEqual([
        ['nofile', 1024, 2048],
        ['nproc', 512, 512],
      ]);
    }
    const plain = await execsOf({ 'force-network-mode': 'sandbox' }, 'FROM busybox\nRUN a\n');
    expect(plain).toEqual([{ network: 0, ulimit: [], mounts: [{ dest: '/', size: 0 }] }]);
  });

  it('refuses bad values as BuildKit does', () => {
    for (const [k, v, msg] of [
      ['force-network-mode', 'bridge', 'invalid netmode bridge'],
      ['shm-size', '1g', 'failed to parse shm size'],
      ['ulimit', 'nofiles=1', 'invalid ulimit type: nofiles'],
      ['ulimit', 'nofile=2:1', 'soft limit must be less than or equal to hard limit'],
      ['ulimit', 'nofile', 'invalid ulimit argument'],
    ] as const)
      expect(() => convertOptionsFromAttrs({ [k]: v })).toThrow(msg);
  });
});
