// Conversion: stages and targets, ARG/ENV scoping, platform ARGs, USER/WORKDIR, image config and
// history, ONBUILD, errors. Each test converts a Dockerfile with a resolver whose configs the test
// defines, marshals it, loads it back and checks the ops.
import { describe, expect, it } from 'vitest';
import { LinuxAmd64, LinuxArm64, formatPlatform } from '@kiln/llb';
import { DockerfileError } from '../dockerfile-error.js';
import {
  DIGEST_A,
  LAYER,
  convertInspect,
  fixedResolver,
  inspect,
} from '../test-support/llb-inspect.js';
import {
  convertDockerfile,
  convertDockerfileSync,
  dockerfileToLLB,
  marshalResult,
} from './convert.js';
import { imageConfigToJson } from './image-config.js';

const BUSYBOX = `docker.io/library/busybox:latest@${DIGEST_A}`;

async function convertError(
  dockerfile: string,
  opts: Parameters<typeof convertInspect>[1] = {},
): Promise<DockerfileError> {
  try {
    await convertInspect(dockerfile, opts);
  } catch (err) {
    if (err instanceof DockerfileError) return err;
    throw err;
  }
  throw new Error('expected a DockerfileError');
}

function envOf(exec: { meta?: { env?: string[] | null } | null }): string[] {
  return exec.meta?.env ?? [];
}

describe('stages and targets', () => {
  const df = [
    'FROM busybox AS base', // 1
    'RUN echo base', // 2
    'FROM base AS unused', // 3
    'RUN echo unused', // 4
    'FROM broken-image AS broken', // 5
    'RUN exit 1', // 6
    'FROM busybox AS final', // 7
    'COPY --from=base /etc/hostname /b', // 8
    'COPY --from=0 /etc /zero', // 9
    'RUN echo final', // 10
    '',
  ].join('\n');

  it('builds the last stage and only what it needs', async () => {
    const calls: string[] = [];
    const r = await convertInspect(df, { metaResolver: fixedResolver({}, calls) });
    const names = r.ops.map((o) => o.name);
    expect(names).toContain('[base 2/2] RUN echo base');
    expect(names).toContain('[final 4/4] RUN echo final');
    expect(names.some((n) => n.includes('unused'))).toBe(false);
    expect(names.some((n) => n.includes('exit 1'))).toBe(false);
    // The broken stage is never resolved: it is not reachable.
    expect(calls).toEqual([
      'docker.io/library/busybox:latest linux/amd64',
      'docker.io/library/busybox:latest linux/amd64',
    ]);
    expect(r.result.stageName).toBe('final');
    const copyBase = r.named('[final 2/4] COPY --from=base');
    const runBase = r.named('RUN echo base');
    expect(copyBase.inputs).toContain(runBase.digest);
    // --from=0 is the first stage, by index.
    expect(r.named('[final 3/4] COPY --from=0').inputs).toContain(runBase.digest);
  });

  it('--target picks a stage; a failing unused stage is skipped', async () => {
    const r = await convertInspect(df, { target: 'unused' });
    expect(r.result.stageName).toBe('unused');
    expect(r.final.name).toBe('[unused 1/1] RUN echo unused');
    expect(r.byDigest(r.final.inputs[0]!).name).toBe('[base 2/2] RUN echo base');
    expect(r.ops.some((o) => o.name.includes('final'))).toBe(false);
  });

  it('building the failing stage reports its base image at the FROM line', async () => {
    const err = await convertError(df, { target: 'broken' });
    expect(err.message).toBe('broken-image: docker.io/library/broken-image:latest: not found');
    expect([err.startLine, err.endLine]).toEqual([5, 5]);
  });

  it('unknown target, with a suggestion', async () => {
    const err = await convertError(df, { target: 'fianl' });
    expect(err.message).toBe('target stage "fianl" could not be found (did you mean final?)');
  });

  it('names steps like BuildKit: stage, index/total; no stage name for a single stage', async () => {
    const r = await convertInspect('FROM busybox\nWORKDIR /app\nRUN true\nENV A=1\nCOPY . .\n');
    expect(r.ops.map((o) => o.name).filter(Boolean)).toEqual([
      `[1/4] FROM ${BUSYBOX}`,
      '[2/4] WORKDIR /app',
      '[3/4] RUN true',
      '[internal] load build context',
      '[4/4] COPY . .',
    ]);
    const from = r.ofKind('source')[0]!;
    expect(from.op.source!.identifier).toBe(`docker-image://${BUSYBOX}`);
    expect(from.description['com.docker.dockerfile.v1.command']).toBe('FROM busybox');
  });

  it('COPY --from an image not in the Dockerfile resolves it as an image', async () => {
    const r = await convertInspect('FROM busybox\nCOPY --from=alpine:3 /x /x\n', {
      metaResolver: fixedResolver({ 'docker.io/library/alpine:3': {} }),
    });
    const copy = r.named('COPY --from=alpine:3');
    const src = r.byDigest(copy.inputs[1]!);
    expect(src.op.source!.identifier).toBe(`docker-image://docker.io/library/alpine:3@${DIGEST_A}`);
  });

  it('undefined --from image, bad index, later stage, cycle: errors at the right lines', async () => {
    let err = await convertError('FROM busybox\nRUN true\nCOPY --from=nothere /x /x\n');
    expect(err.message).toBe('nothere: docker.io/library/nothere:latest: not found');
    expect(err.startLine).toBe(3);
    err = await convertError('FROM busybox\nCOPY --from=3 /x /x\n');
    expect([err.message, err.startLine]).toEqual(['invalid stage index 3', 2]);
    err = await convertError(
      'FROM busybox AS a\nCOPY --from=b /x /x\nFROM busybox AS b\nRUN true\nFROM a\n',
    );
    expect([err.message, err.startLine]).toEqual([
      'cannot copy from stage "b", it needs to be defined before current stage "a"',
      2,
    ]);
    err = await convertError(
      'FROM busybox AS a\nCOPY --from=b /x /x\nFROM busybox AS b\nCOPY --from=a /y /y\n',
    );
    expect(err.message).toBe('circular dependency detected on stage: a');
    expect([err.startLine, err.endLine]).toEqual([2, 4]);
    err = await convertError('FROM busybox\nCOPY --from=$X /x /x\n');
    expect(err.message).toMatch(/^variable expansion is not supported for --from/);
  });

  it('FROM scratch needs no resolver; a stage image without layers is scratch', async () => {
    const r = await convertInspect('FROM scratch\nCOPY a /a\n');
    expect(r.ofKind('source').map((o) => o.op.source!.identifier)).toEqual(['local://context']);
    expect(r.result.imageConfig.config).toEqual({
      Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
      WorkingDir: '/',
    });
    const empty = await convertInspect('FROM empty\nCOPY a /a\n', {
      metaResolver: (ref) =>
        Promise.resolve({
          ref,
          config: {
            architecture: 'amd64',
            os: 'linux',
            rootfs: { type: 'layers', diff_ids: [] },
            config: {},
          },
        }),
    });
    expect(empty.ofKind('source').map((o) => o.op.source!.identifier)).toEqual(['local://context']);
  });

  it('convert_test.go TestDockerfileParsing and TestDockerfileCircularDependencies', async () => {
    await convertInspect('FROM scratch\nENV FOO bar\nCOPY f1 f2 /sub/\nRUN ls -l\n');
    // Copies from scratch stages: marshaled (as BuildKit's test does), not loaded, since our
    // Definition validator rejects a copy that reads nothing.
    const df2 =
      'FROM scratch AS foo\nENV FOO bar\nFROM foo\nCOPY --from=foo f1 /\nCOPY --from=0 f2 /\n\t';
    const r2 = await convertDockerfile(df2, { targetPlatform: LinuxAmd64 });
    expect(r2.stageName).toBe('stage-1');
    expect(marshalResult(r2).def.length).toBeGreaterThan(1);
    expect(
      (await convertDockerfile(df2, { target: 'Foo', targetPlatform: LinuxAmd64 })).stageName,
    ).toBe('foo');
    await expect(convertDockerfile(df2, { target: 'nosuch' })).rejects.toThrow(
      'target stage "nosuch" could not be found',
    );
    await convertInspect(
      'FROM scratch\n\tADD http://github.com/moby/buildkit/blob/master/README.md /\n\t\t',
    );
    await expect(
      convertInspect(
        'FROM scratch\n\tCOPY http://github.com/moby/buildkit/blob/master/README.md /\n',
      ),
    ).rejects.toThrow("source can't be a URL for COPY");
    await expect(convertInspect('FROM "" AS foo')).rejects.toThrow(
      'base name ("") should not be blank',
    );
    await expect(convertInspect('FROM ${BLANK} AS foo')).rejects.toThrow(
      'base name (${BLANK}) should not be blank',
    );
    await expect(
      convertInspect('FROM busybox AS stage0\nCOPY --from=stage0 f1 /sub/\n'),
    ).rejects.toThrow('circular dependency detected on stage: stage0');
    await expect(
      convertInspect(
        'FROM busybox AS stage0\nCOPY --from=stage2 f1 /sub/\nFROM busybox AS stage1\nCOPY --from=stage0 f2 /sub/\nFROM busybox AS stage2\nCOPY --from=stage1 f2 /sub/\n',
      ),
    ).rejects.toThrow('circular dependency detected on stage: stage0');
  });

  it('the same Dockerfile marshals to the same bytes', async () => {
    const df2 =
      'FROM busybox AS a\nRUN --mount=type=cache,target=/c true\nFROM busybox\nCOPY --link --from=a /x /y\nRUN echo $HOME\n';
    const a = await convertInspect(df2);
    const b = await convertInspect(df2);
    expect(a.definition.digests()).toEqual(b.definition.digests());
  });
});

describe('ARG and ENV scoping', () => {
  it('global ARGs feed FROM; a stage sees them only when it declares them', async () => {
    const r = await convertInspect(
      [
        'ARG IMG=busybox',
        'ARG V=1',
        'FROM ${IMG}',
        'RUN echo a',
        'ARG V',
        'RUN echo b',
        'ARG W=2',
        'ENV E=$V-$W',
        'RUN echo c',
        '',
      ].join('\n'),
    );
    expect(r.ofKind('source')[0]!.op.source!.identifier).toBe(`docker-image://${BUSYBOX}`);
    const [a, b, c] = r.execs();
    expect(envOf(a!)).toEqual([
      'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    ]);
    expect(envOf(b!)).toContain('V=1');
    expect(envOf(c!)).toEqual(expect.arrayContaining(['V=1', 'W=2', 'E=1-2']));
    // ARGs are not in the image config; ENV is.
    expect(r.result.imageConfig.config.Env).toEqual([
      'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      'E=1-2',
    ]);
    const history = r.result.imageConfig.history!.map((h) => h.created_by);
    expect(history.slice(1)).toEqual([
      'RUN /bin/sh -c echo a # buildkit',
      // As buildkitd v0.11.6 writes it: the global's value is not shown.
      'ARG V',
      'RUN |1 V=1 /bin/sh -c echo b # buildkit',
      'ARG W=2',
      'ENV E=1-2',
      'RUN |2 V=1 W=2 /bin/sh -c echo c # buildkit',
    ]);
  });

  it('build args override defaults, global and stage; undeclared build args are ignored', async () => {
    const r = await convertInspect('ARG V=1\nFROM busybox\nARG V\nARG S=x\nRUN echo $V $S\n', {
      buildArgs: { V: 'g', S: 's', UNUSED: 'u' },
    });
    const env = envOf(r.execs()[0]!);
    expect(env).toEqual(expect.arrayContaining(['V=g', 'S=s']));
    expect(env.some((e) => e.startsWith('UNUSED'))).toBe(false);
    expect(r.named('RUN').name).toBe('[2/2] RUN echo g s');
  });

  it('ENV from the base image config, expanded by later ENV; ARG defaults see ENV', async () => {
    const r = await convertInspect('FROM base\nENV PATH=/opt/bin:$PATH\nARG P=$PATH\nRUN true\n', {
      metaResolver: fixedResolver({
        'docker.io/library/base:latest': { Env: ['PATH=/bin', 'LANG=C'] },
      }),
    });
    const env = envOf(r.execs()[0]!);
    expect(env).toEqual(['LANG=C', 'PATH=/opt/bin:/bin', 'P=/opt/bin:/bin']);
    expect(r.result.imageConfig.config.Env).toEqual(['PATH=/opt/bin:/bin', 'LANG=C']);
  });

  it('a required variable that is unset fails at its line', async () => {
    const err = await convertError('FROM busybox\nRUN true\nENV A=${NEED:?missing}\n');
    expect(err.message).toBe('failed to process "${NEED:?missing}": NEED: missing');
    expect(err.startLine).toBe(3);
    const err2 = await convertError('ARG B\nFROM ${B}\n');
    expect([err2.message, err2.startLine]).toEqual(['base name (${B}) should not be blank', 2]);
  });

  it('proxy build args reach RUN as proxy env, not as env', async () => {
    const r = await convertInspect('FROM busybox\nRUN true\n', {
      buildArgs: { HTTP_PROXY: 'http://p:3128', no_proxy: 'local' },
    });
    const exec = r.execs()[0]!;
    expect(exec.meta!.proxyEnv).toMatchObject({ httpProxy: 'http://p:3128', noProxy: 'local' });
    expect(envOf(exec).some((e) => e.includes('proxy') || e.includes('PROXY'))).toBe(false);
  });
});

describe('platform ARGs', () => {
  const df =
    'FROM --platform=$BUILDPLATFORM busybox AS build\nARG TARGETPLATFORM TARGETOS TARGETARCH TARGETVARIANT BUILDPLATFORM BUILDARCH\nRUN echo $TARGETARCH\nFROM busybox\nARG TARGETARCH\nCOPY --from=build /out /out\nRUN echo $TARGETARCH\n';

  for (const target of [LinuxAmd64, LinuxArm64]) {
    it(`target ${formatPlatform(target)} built on linux/amd64`, async () => {
      const r = await convertInspect(df, { targetPlatform: target, buildPlatform: LinuxAmd64 });
      const build = r.named('[build 2/2] RUN');
      expect(build.op.platform).toMatchObject({ OS: 'linux', Architecture: 'amd64' });
      expect(envOf(build.op.exec!)).toEqual(
        expect.arrayContaining([
          `TARGETPLATFORM=${formatPlatform(target)}`,
          'TARGETOS=linux',
          `TARGETARCH=${target.architecture}`,
          'TARGETVARIANT=',
          'BUILDPLATFORM=linux/amd64',
          'BUILDARCH=amd64',
        ]),
      );
      const final = r.named('[stage-1 3/3] RUN');
      expect(final.op.platform).toMatchObject({ OS: 'linux', Architecture: target.architecture });
      expect(envOf(final.op.exec!)).toContain(`TARGETARCH=${target.architecture}`);
      expect(r.result.imageConfig).toMatchObject({
        os: 'linux',
        architecture: target.architecture,
      });
      expect(r.ofKind('source').map((o) => o.op.platform?.Architecture)).toContain(
        target.architecture,
      );
    });
  }

  it('several platforms: one result each, step names prefixed with the platform', async () => {
    const results = await dockerfileToLLB('FROM busybox\nARG TARGETARCH\nRUN echo $TARGETARCH\n', {
      targetPlatforms: [LinuxAmd64, LinuxArm64],
      buildPlatform: LinuxAmd64,
      metaResolver: fixedResolver(),
    });
    expect(results.map((r) => r.platform.architecture)).toEqual(['amd64', 'arm64']);
    const names = results.map(
      (r) => inspect(r, marshalResult(r, { localUniqueId: 't' })).named('RUN').name,
    );
    expect(names).toEqual(['[linux/amd64 2/2] RUN echo amd64', '[linux/arm64 2/2] RUN echo arm64']);
  });

  it('without a target platform, a base image of another platform keeps its own', async () => {
    const r = await convertDockerfile('FROM busybox\nRUN true\n', {
      buildPlatform: LinuxAmd64,
      metaResolver: (ref) =>
        Promise.resolve({
          ref,
          config: {
            architecture: 'arm64',
            os: 'linux',
            rootfs: { type: 'layers', diff_ids: [LAYER] },
            config: {},
          },
        }),
    });
    expect(r.imageConfig.architecture).toBe('arm64');
  });
});

describe('USER and WORKDIR', () => {
  it('WORKDIR makes its directory (parents, owned by USER), relative paths join', async () => {
    const r = await convertInspect(
      'FROM busybox\nUSER app\nWORKDIR /srv\nWORKDIR data\nWORKDIR /\nRUN pwd\n',
    );
    const mkdirs = r.ofKind('file').map((o) => o.op.file?.actions?.[0]?.mkdir ?? {});
    expect(mkdirs.map((m) => [m.path, m.mode, m.makeParents, m.owner?.user?.byName?.name])).toEqual(
      [
        ['/srv', 0o755, true, 'app'],
        ['/srv/data', 0o755, true, 'app'],
      ],
    );
    const exec = r.execs()[0]!;
    expect([exec.meta!.cwd, exec.meta!.user]).toEqual(['/', 'app']);
    expect(r.result.imageConfig.config).toMatchObject({ User: 'app', WorkingDir: '/' });
    expect(
      r.result.imageConfig.history!.slice(1).map((h) => [h.created_by, h.empty_layer ?? false]),
    ).toEqual([
      ['USER app', true],
      ['WORKDIR /srv', false],
      ['WORKDIR /srv/data', false],
      ['WORKDIR /', true],
      ['RUN /bin/sh -c pwd # buildkit', false],
    ]);
  });

  it('the base image WORKDIR and USER apply without a new layer', async () => {
    const r = await convertInspect('FROM app\nRUN id\n', {
      metaResolver: fixedResolver({
        'docker.io/library/app:latest': { WorkingDir: '/home/app', User: '1000:1000' },
      }),
    });
    expect(r.ofKind('file')).toHaveLength(0);
    const exec = r.execs()[0]!;
    expect([exec.meta!.cwd, exec.meta!.user]).toEqual(['/home/app', '1000:1000']);
  });

  it('USER with a variable, numeric ids in chown', async () => {
    const r = await convertInspect('FROM busybox\nARG U=1000:1000\nUSER $U\nWORKDIR /w\n');
    expect(r.ofKind('file')[0]?.op.file?.actions?.[0]?.mkdir?.owner).toMatchObject({
      user: { byID: 1000 },
      group: { byID: 1000 },
    });
  });
});

describe('image config', () => {
  it('SHELL, CMD, ENTRYPOINT, HEALTHCHECK, LABEL, EXPOSE, VOLUME, STOPSIGNAL, MAINTAINER', async () => {
    const r = await convertInspect(
      [
        'FROM busybox',
        'MAINTAINER me@example.com',
        'SHELL ["/bin/bash", "-eu", "-c"]',
        'RUN echo hi',
        'CMD echo <cmd>',
        'ENTRYPOINT ["/entry"]',
        'HEALTHCHECK --interval=30s --timeout=5s --start-period=1m30s --start-interval=2s --retries=3 CMD curl -f http://localhost/',
        'LABEL a=b "c d"="e f"',
        'EXPOSE 80 443/udp 8000-8001',
        'VOLUME ["/data", "/cache"]',
        'STOPSIGNAL SIGQUIT',
        '',
      ].join('\n'),
      { labels: { 'org.opencontainers.image.source': 'x' } },
    );
    expect(r.execs()[0]!.meta!.args).toEqual(['/bin/bash', '-eu', '-c', 'echo hi']);
    const c = r.result.imageConfig;
    expect(c.author).toBe('me@example.com');
    expect(c.config).toEqual({
      Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
      Cmd: ['/bin/bash', '-eu', '-c', 'echo <cmd>'],
      ArgsEscaped: true,
      Entrypoint: ['/entry'],
      Shell: ['/bin/bash', '-eu', '-c'],
      Healthcheck: {
        Test: ['CMD-SHELL', 'curl -f http://localhost/'],
        Interval: 30e9,
        Timeout: 5e9,
        StartPeriod: 90e9,
        StartInterval: 2e9,
        Retries: 3,
      },
      Labels: { a: 'b', 'c d': 'e f', 'org.opencontainers.image.source': 'x' },
      ExposedPorts: { '80/tcp': {}, '443/udp': {}, '8000/tcp': {}, '8001/tcp': {} },
      Volumes: { '/data': {}, '/cache': {} },
      StopSignal: 'SIGQUIT',
    });
    expect(c.history!.slice(1).map((h) => h.created_by)).toEqual([
      'MAINTAINER me@example.com',
      'SHELL [/bin/bash -eu -c]',
      'RUN /bin/bash -eu -c echo hi # buildkit',
      'CMD ["/bin/bash" "-eu" "-c" "echo <cmd>"]',
      'ENTRYPOINT ["/entry"]',
      'HEALTHCHECK {Test:[CMD-SHELL curl -f http://localhost/] Interval:30s Timeout:5s StartPeriod:1m30s StartInterval:2s Retries:3}',
      'LABEL a=b c d=e f',
      'EXPOSE map[443/udp:{} 80/tcp:{} 8000/tcp:{} 8001/tcp:{}]',
      'VOLUME [/data /cache]',
      'STOPSIGNAL SIGQUIT',
    ]);
    // Go's encoding/json: struct field order, sorted maps, HTML-safe escaping.
    const json = imageConfigToJson(c);
    expect(
      json.startsWith(
        '{"author":"me@example.com","architecture":"amd64","os":"linux","config":{"ExposedPorts":{"443/udp":{},"80/tcp":{},"8000/tcp":{},"8001/tcp":{}},"Env":',
      ),
    ).toBe(true);
    expect(json).toContain('"Cmd":["/bin/bash","-eu","-c","echo \\u003ccmd\\u003e"]');
    expect(json).toContain('"rootfs":{"type":"layers","diff_ids":["' + LAYER + '"]}');
    expect(json).toContain(
      '"history":[{"created":"2024-01-01T00:00:00Z","created_by":"ADD rootfs.tar /"}',
    );
  });

  it('ENTRYPOINT drops an inherited CMD but keeps one set in the same stage; HEALTHCHECK NONE', async () => {
    const base = {
      'docker.io/library/base:latest': { Cmd: ['sh'], Healthcheck: { Test: ['CMD', 'true'] } },
    };
    let r = await convertInspect('FROM base\nENTRYPOINT ["/e"]\nHEALTHCHECK NONE\n', {
      metaResolver: fixedResolver(base),
    });
    expect(r.result.imageConfig.config.Cmd).toBeUndefined();
    expect(r.result.imageConfig.config.Healthcheck).toEqual({
      Test: ['NONE'],
      Interval: 0,
      Timeout: 0,
      StartPeriod: 0,
      StartInterval: 0,
      Retries: 0,
    });
    r = await convertInspect('FROM base\nCMD ["x"]\nENTRYPOINT ["/e"]\n', {
      metaResolver: fixedResolver(base),
    });
    expect(r.result.imageConfig.config.Cmd).toEqual(['x']);
    // created is dropped from the base config; the base history is kept.
    expect(r.result.imageConfig.created).toBeUndefined();
    expect(r.result.baseImageConfig?.created).toBe('2024-01-01T00:00:00Z');
  });

  it('an invalid STOPSIGNAL or EXPOSE fails at its line', async () => {
    let err = await convertError('FROM busybox\nSTOPSIGNAL SIGNOPE\n');
    expect([err.message, err.startLine]).toEqual(['Invalid signal: SIGNOPE', 2]);
    err = await convertError('FROM busybox\nEXPOSE 80/xyz\n');
    expect([err.message, err.startLine]).toEqual(['invalid proto: xyz', 2]);
  });
});

describe('ONBUILD', () => {
  it('is stored in the config of the image that declares it', async () => {
    const r = await convertInspect('FROM busybox\nONBUILD RUN echo child\nONBUILD COPY . /app\n');
    expect(r.result.imageConfig.config.OnBuild).toEqual(['RUN echo child', 'COPY . /app']);
    expect(r.execs()).toHaveLength(0);
  });

  it("a base image's triggers run first in the child, named ONBUILD, and are cleared", async () => {
    const r = await convertInspect('FROM parent\nRUN echo own\n', {
      metaResolver: fixedResolver({
        'docker.io/library/parent:latest': {
          OnBuild: ['RUN echo trigger', 'COPY --from=helper:1 /x /x'],
        },
        'docker.io/library/helper:1': {},
      }),
    });
    expect(r.ops.map((o) => o.name).filter((n) => n.includes('RUN') || n.includes('COPY'))).toEqual(
      [
        '[2/4] ONBUILD RUN echo trigger',
        '[3/4] ONBUILD COPY --from=helper:1 /x /x',
        '[4/4] RUN echo own',
      ],
    );
    expect(r.result.imageConfig.config.OnBuild).toBeUndefined();
  });

  it("a parent stage's ONBUILD runs in a child stage", async () => {
    const r = await convertInspect(
      'FROM busybox AS p\nONBUILD RUN echo from-p\nFROM p\nRUN echo child\n',
    );
    const names = r.ops.map((o) => o.name);
    expect(names).toContain('[stage-1 1/2] ONBUILD RUN echo from-p');
    expect(r.result.imageConfig.config.OnBuild).toBeUndefined();
  });
});

describe('errors', () => {
  it.each([
    ['FROM busybox\nRUN true\nFROOM x\n', 'unknown instruction: FROOM (did you mean FROM?)', 3],
    [
      'FROM busybox\nCOPY --chmod=999 a b\n',
      "invalid chmod parameter: '999'. it should be octal string and between 0 and 07777",
      2,
    ],
    [
      'FROM busybox\nCOPY --chmod=u+x a b\n',
      'symbolic --chmod=u+x is not supported yet; use an octal mode',
      2,
    ],
    ['FROM busybox\nCOPY --chmod=bogus a b\n', "invalid chmod parameter: 'bogus'", 2],
    [
      'FROM busybox\nRUN --mount=type=cache,target=/x,sharing=sometimes true\n',
      'unsupported sharing value "sometimes"',
      2,
    ],
    ['FROM busybox\nRUN --mount=type=bind,target=/ true\n', 'invalid mount target "/"', 2],
    [
      'FROM --platform=linux/ busybox\n',
      'failed to parse platform linux/: invalid platform "linux/": want os/arch[/variant]',
      1,
    ],
    ['FROM busybox\nCOPY http://example.com/a /a\n', "source can't be a URL for COPY", 2],
    ['FROM busybox\nRUN x\nCOPY --chown=${U:?nouser} a b\n', 'U: nouser', 3],
    [
      'FROM busybox\nADD --checksum=sha256:abc a b\n',
      'checksum requires HTTP(S) or Git sources',
      2,
    ],
    ['FROM busybox\nRUN []\n', 'RUN requires at least one argument', 2],
    ['FROM Busybox\n', 'failed to parse stage name "Busybox"', 1],
    ['FROM busybox\nWORKDIR ""\n', 'normalizing workdir: cannot normalize empty path', 2],
  ])('%j', async (df, msg, line) => {
    const err = await convertError(df);
    expect(err.message).toContain(msg);
    expect(err.startLine).toBe(line);
  });

  it('an empty Dockerfile, and one without FROM', async () => {
    await expect(convertDockerfile('')).rejects.toThrow('the Dockerfile cannot be empty');
    await expect(convertDockerfile('ARG A=1\n')).rejects.toThrow(
      'dockerfile contains no stages to build',
    );
  });
});

describe('SOURCE_DATE_EPOCH', () => {
  it('stamps history entries and the files COPY and WORKDIR create', async () => {
    const r = await convertInspect('FROM busybox\nWORKDIR /w\nCOPY a b\nENV A=1\n', {
      buildArgs: { SOURCE_DATE_EPOCH: '1700000000' },
    });
    const created = '2023-11-14T22:13:20Z';
    expect(r.result.imageConfig.history!.slice(1).map((h) => h.created)).toEqual([
      created,
      created,
      created,
    ]);
    const ns = 1700000000n * 1_000_000_000n;
    const [mk, cp] = r.ofKind('file').map((o) => o.op.file!.actions![0]!);
    expect(BigInt(String(mk!.mkdir!.timestamp))).toBe(ns);
    expect(BigInt(String(cp!.copy!.timestamp))).toBe(ns);
    await expect(
      convertInspect('FROM busybox\n', { buildArgs: { SOURCE_DATE_EPOCH: 'yesterday' } }),
    ).rejects.toThrow('invalid SOURCE_DATE_EPOCH: yesterday');
  });
});

describe('source map', () => {
  it('maps each op made for an instruction to its lines, and carries the Dockerfile', async () => {
    const df =
      'FROM busybox AS a\nWORKDIR /w\nRUN echo \\\n  two lines\nCOPY --link x /x\nFROM busybox\nCOPY --from=a /w /w\n';
    const result = await convertDockerfile(df, {
      metaResolver: fixedResolver(),
      targetPlatform: LinuxAmd64,
    });
    const plain = marshalResult(result, { localUniqueId: 'u' });
    const def = marshalResult(result, { localUniqueId: 'u', sourceMapFilename: 'Dockerfile' });
    expect(def.digests()).toEqual(plain.digests());
    const r = inspect(result, def);
    const lines = (name: string, kind?: Parameters<typeof r.named>[1]): number[][] =>
      (def.source!.locations![r.named(name, kind).digest]!.locations ?? []).map((l) => [
        l.ranges![0]!.start!.line!,
        l.ranges![0]!.end!.line!,
      ]);
    expect(lines('[a 1/4] FROM')).toEqual([
      [1, 1],
      [6, 6],
    ]);
    expect(lines('WORKDIR /w')).toEqual([[2, 2]]);
    expect(lines('RUN echo')).toEqual([[3, 4]]);
    expect(lines('LINK COPY')).toEqual([[5, 5]]);
    expect(lines('[a 4/4] COPY --link', 'file')).toEqual([[5, 5]]);
    expect(lines('COPY --from=a')).toEqual([[7, 7]]);
    expect(def.source!.infos).toEqual([
      { filename: 'Dockerfile', data: Buffer.from(df), language: 'Dockerfile' },
    ]);
    expect(plain.source!.infos ?? []).toEqual([]);
  });
});

describe('synchronous conversion', () => {
  it('gives the same graph as the async one', async () => {
    const df = 'FROM busybox AS a\nRUN echo a\nFROM busybox\nCOPY --from=a /a /a\n';
    const cfg = {
      architecture: 'amd64',
      os: 'linux',
      rootfs: { type: 'layers', diff_ids: [LAYER] },
      config: {},
    };
    const sync = convertDockerfileSync(df, {
      targetPlatform: LinuxAmd64,
      metaResolver: (ref) => ({ ref, config: cfg }),
    });
    const async = await convertDockerfile(df, {
      targetPlatform: LinuxAmd64,
      metaResolver: (ref) => Promise.resolve({ ref, config: cfg }),
    });
    expect(marshalResult(sync, { localUniqueId: 'u' }).digests()).toEqual(
      marshalResult(async, { localUniqueId: 'u' }).digests(),
    );
  });
});
