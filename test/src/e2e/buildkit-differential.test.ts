/**
 * Differential tests against the reference BuildKit v0.11.6 (`../shared/tools/buildkit`, or
 * `KILN_BUILDKIT_DIR`): one Dockerfile, one base image (the fixture busybox in the harness's
 * registry), built by buildctl on buildkitd and by `kiln build` on the local farm, both exported
 * as OCI tarballs (a `type=local` export by buildctl writes every file as its own user, so owners
 * are compared from the image's layers); the trees under `/t` must have the same paths, types,
 * modes, owners, contents and link targets (mtimes aside). Each case is one of BuildKit's behaviours issue 15 names:
 * the mode of files `COPY <<EOF` heredocs write, the supplementary groups `USER` brings from
 * `/etc/group`, the setgid bit directories made by WORKDIR inherit from their parent, and the
 * archive's own owners inside an `ADD --chown` of a local archive.
 */
import { execFile } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { makeTempDir, ociRootfs } from '../harness/index.js';
import type { RootfsEntry } from '../harness/index.js';
import { bundleFarmDaemon } from './local-farm-daemon.js';
import { startReferenceBuildkit } from './reference-buildkit.js';
import type { ReferenceBuildkit } from './reference-buildkit.js';
import { runKiln } from './run-kiln.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const fixture = process.env.KILN_TEST_FIXTURE_IMAGE;
const registry = process.env.KILN_TEST_REGISTRY;

let tmp: { dir: string; remove: () => void };
let bk: ReferenceBuildkit | undefined;

beforeAll(async () => {
  if (!fixture || !registry)
    throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through the vitest global setup');
  tmp = makeTempDir('bk-differential');
  process.env.KILN_FARM_DAEMON = await bundleFarmDaemon(join(tmp.dir, 'bundle'));
  bk = await startReferenceBuildkit(join(tmp.dir, 'buildkit'), registry);
}, 180_000);

afterAll(async () => {
  await bk?.stop();
  if (tmp) await runKiln(['farm', 'stop'], { KILN_STATE_DIR: join(tmp.dir, 'kiln-state') });
  delete process.env.KILN_FARM_DAEMON;
  tmp?.remove();
});

type Tree = Record<string, RootfsEntry>;

/** The entries under `t/` of the one platform of an OCI tarball, by path below `t/`. */
async function treeOfT(tarball: string): Promise<Tree> {
  const platforms = [...(await ociRootfs(tarball)).values()];
  expect(platforms).toHaveLength(1);
  const out: Tree = {};
  for (const [p, e] of platforms[0]!) if (p.startsWith('t/')) out[p.slice(2)] = e;
  return out;
}

/** Builds `ctx` with both tools; returns the two trees under `/t` of their images. */
async function buildBoth(name: string, ctx: string): Promise<{ kiln: Tree; buildkit: Tree }> {
  const kout = join(tmp.dir, `${name}-kiln.tar`);
  const bkout = join(tmp.dir, `${name}-buildkit.tar`);
  await bk!.build(ctx, [
    '--opt',
    `build-arg:BASE=${fixture}`,
    '--output',
    `type=oci,dest=${bkout}`,
  ]);
  const k = await runKiln(
    [
      'build',
      ctx,
      '--progress',
      'plain',
      '--build-arg',
      `BASE=${fixture}`,
      '--output',
      `type=oci,dest=${kout}`,
    ],
    { KILN_STATE_DIR: join(tmp.dir, 'kiln-state') },
  );
  expect(k.code, k.out).toBe(0);
  return {
    kiln: await treeOfT(kout),
    buildkit: await treeOfT(bkout),
  };
}

async function context(name: string, dockerfile: string): Promise<string> {
  const ctx = join(tmp.dir, `${name}-ctx`);
  await mkdir(ctx, { recursive: true });
  await writeFile(join(ctx, 'Dockerfile'), dockerfile);
  return ctx;
}

const header = 'ARG BASE\nFROM ${BASE}\nRUN mkdir -p /t && chmod 0777 /t\n';

describe('Kiln and BuildKit v0.11.6 build the same trees', () => {
  it('COPY <<EOF heredocs: modes, --chmod, --chown', async () => {
    const ctx = await context(
      'heredoc',
      header +
        'COPY <<EOF /t/plain\nhello\nEOF\n' +
        'COPY --chmod=0755 <<EOF /t/exec.sh\n#!/bin/sh\necho hi\nEOF\n' +
        'COPY --chown=12:34 <<EOF /t/dir/owned\nowned\nEOF\n' +
        'COPY <<A <<B /t/two/\na\nA\nb\nB\n',
    );
    const { kiln, buildkit } = await buildBoth('heredoc', ctx);
    expect(Object.keys(buildkit).length).toBeGreaterThan(4);
    expect(kiln).toEqual(buildkit);
  }, 600_000);

  it('USER brings the supplementary groups of /etc/group', async () => {
    const ctx = await context(
      'user-groups',
      header +
        "RUN echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd && " +
        "echo 'app:x:1000:' >> /etc/group && echo 'extra:x:2000:app' >> /etc/group && " +
        "echo 'more:x:2001:root,app' >> /etc/group && echo 'none:x:2002:root' >> /etc/group\n" +
        'USER app\nRUN id -G > /t/groups-app && touch /t/made-by-app\n' +
        'USER app:extra\nRUN id -G > /t/groups-app-extra\n' +
        'USER 1000\nRUN id -G > /t/groups-1000\n' +
        'USER root\nRUN id -G > /t/groups-root\n',
    );
    const { kiln, buildkit } = await buildBoth('user-groups', ctx);
    expect(Object.keys(buildkit).sort()).toEqual([
      'groups-1000',
      'groups-app',
      'groups-app-extra',
      'groups-root',
      'made-by-app',
    ]);
    expect(kiln).toEqual(buildkit);
  }, 600_000);

  it('WORKDIR keeps the setgid bit its new directories inherit', async () => {
    const ctx = await context(
      'workdir-setgid',
      header +
        'RUN mkdir /t/sg && chown 0:50 /t/sg && chmod 2775 /t/sg\n' +
        'WORKDIR /t/sg/a/b\nRUN touch made-in-workdir\n' +
        'WORKDIR /t/plain/c\n',
    );
    const { kiln, buildkit } = await buildBoth('workdir-setgid', ctx);
    expect(buildkit['sg/a']?.type).toBe('directory');
    expect(kiln).toEqual(buildkit);
  }, 600_000);

  it("ADD --chown of a local archive keeps the archive's own owners inside it", async () => {
    const ctx = await context(
      'add-chown',
      header +
        'ADD --chown=1000:1000 files.tar /t/archive/\n' +
        'ADD --chown=1000:1000 files.tar.gz /t/archive-gz/\n' +
        'ADD --chown=1000:1000 plain.txt /t/plain/\n',
    );
    const src = join(ctx, 'src');
    await mkdir(join(src, 'd'), { recursive: true });
    await writeFile(join(src, 'd', 'f'), 'in the archive\n');
    await writeFile(join(src, 'top'), 'top\n');
    await writeFile(join(ctx, 'plain.txt'), 'plain\n');
    for (const [name, z] of [
      ['files.tar', []],
      ['files.tar.gz', ['-z']],
    ] as const)
      await run('tar', [
        ...z,
        '-cf',
        join(ctx, name),
        '--owner=123',
        '--group=456',
        '--numeric-owner',
        '-C',
        src,
        'd',
        'top',
      ]);
    const { kiln, buildkit } = await buildBoth('add-chown', ctx);
    expect(buildkit['archive/top']?.type).toBe('file');
    expect(kiln).toEqual(buildkit);
  }, 600_000);
});
