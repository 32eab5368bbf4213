/**
 * Differential: named contexts (`--build-context` / BuildKit's `context:NAME` attributes) and the
 * RUN sandbox attributes (`force-network-mode=none`, `shm-size`, `ulimit`) through Kiln and the
 * reference BuildKit v0.11.6 (`../shared/tools/buildkit`, or `KILN_BUILDKIT_DIR`): the same
 * Dockerfile and base image, the output trees compared. Real processes: buildkitd (runc) through
 * its start script, the local farm daemon, the harness's registry with the fixture busybox image;
 * for git and http named contexts, `git daemon` serving a repository made by the test and an
 * HTTP server of the test's, both on loopback.
 */
import { execFile } from 'node:child_process';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import { connect } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort, spawnManaged, waitFor } from '../harness/index.js';
import type { ManagedProcess } from '../harness/index.js';
import { localFarmSuite } from './local-farm-suite.js';
import { startReferenceBuildkit } from './reference-buildkit.js';
import type { ReferenceBuildkit } from './reference-buildkit.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE;
const registry = process.env.KILN_TEST_REGISTRY;

const run = promisify(execFile);
const suite = localFarmSuite('buildx-contexts-buildkit');
let buildkitd: ReferenceBuildkit | undefined;
let gitDaemon: ManagedProcess | undefined;
let httpServer: Server | undefined;

beforeAll(async () => {
  if (!registry) throw new Error('KILN_TEST_REGISTRY is not set: run through the global setup');
  buildkitd = await startReferenceBuildkit(join(suite.dir(), 'buildkit'), registry);
}, 180_000);

afterAll(async () => {
  await buildkitd?.stop();
  await gitDaemon?.stop();
  await new Promise((r) => (httpServer ? httpServer.close(r) : r(undefined)));
});

/** Both tools' output trees of `ctx`, Kiln's with `kilnArgs`, BuildKit's with `bkArgs`. */
async function bothTrees(
  name: string,
  ctx: string,
  kilnArgs: string[],
  bkArgs: string[],
): Promise<{ kiln: Record<string, string>; buildkit: Record<string, string> }> {
  const kilnOut = join(suite.dir(), `${name}-kiln`);
  const r = await suite.build(ctx, ...kilnArgs, '-o', `type=local,dest=${kilnOut}`);
  expect(r.code, r.out).toBe(0);
  const bkOut = join(suite.dir(), `${name}-bk`);
  await buildkitd!.build(ctx, [...bkArgs, '--output', `type=local,dest=${bkOut}`]);
  return { kiln: await tree(kilnOut), buildkit: await tree(bkOut) };
}

/** Every file of a tree (relative path -> content), for comparison. */
async function tree(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!e.isFile()) continue;
    const p = join(e.parentPath, e.name);
    out[p.slice(dir.length + 1)] = await readFile(p, 'utf8');
  }
  return out;
}

describe('named contexts and RUN sandbox attributes, Kiln vs BuildKit v0.11.6', () => {
  it('give the same output tree', async () => {
    const ctx = await suite.context({
      Dockerfile: [
        'FROM scratch AS deps',
        'COPY no-such-file /',
        'FROM kiln.invalid/base:1 AS tools',
        'RUN echo tools > /tools',
        'FROM kiln.invalid/base:1 AS probe',
        'COPY --from=deps /lib.txt /deps/',
        'COPY --from=tools /tools /tools',
        'RUN cat /deps/lib.txt /tools > /summary',
        'RUN cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d " " > /net',
        `RUN grep " /dev/shm " /proc/mounts | grep -o "size=[0-9]*k" > /shm`,
        'RUN grep -E "^Max (open files|processes)" /proc/self/limits > /limits',
        'FROM scratch',
        'COPY --from=probe /summary /net /shm /limits /',
      ].join('\n'),
    });
    const deps = join(suite.dir(), 'deps');
    await mkdir(deps);
    await writeFile(join(deps, 'lib.txt'), 'named\n');
    const kilnOut = join(suite.dir(), 'kiln-out');
    const r = await suite.build(
      ctx,
      '--build-context',
      `deps=${deps}`,
      '--build-context',
      `kiln.invalid/base:1=docker-image://${fixture}`,
      '--network',
      'none',
      '--shm-size',
      '80m',
      '--ulimit',
      'nofile=512:1024',
      '--ulimit',
      'nproc=2000:4000',
      '-o',
      `type=local,dest=${kilnOut}`,
    );
    expect(r.out).not.toContain('ERROR');
    expect(r.code).toBe(0);
    const bkOut = join(suite.dir(), 'bk-out');
    await buildkitd!.build(ctx, [
      '--local',
      `deps=${deps}`,
      '--opt',
      'context:deps=local:deps',
      '--opt',
      `context:kiln.invalid/base:1=docker-image://${fixture}`,
      '--opt',
      'force-network-mode=none',
      '--opt',
      `shm-size=${80 * 1024 * 1024}`,
      '--opt',
      'ulimit=nofile=512:1024,nproc=2000:4000',
      '--output',
      `type=local,dest=${bkOut}`,
    ]);
    const kiln = await tree(kilnOut);
    expect(kiln.summary).toBe('named\ntools\n');
    expect(kiln.net).toBe('lo\n');
    expect(kiln).toEqual(await tree(bkOut));
  });

  it("a named directory's own .dockerignore is honoured", async () => {
    const ctx = await suite.context({
      Dockerfile: 'FROM scratch\nCOPY --from=deps / /deps/\n',
      // The main context's ignore file says nothing of the named one's files.
      '.dockerignore': 'nothing-here\n',
    });
    const deps = join(suite.dir(), 'deps-ignored');
    await mkdir(join(deps, 'sub'), { recursive: true });
    await writeFile(join(deps, '.dockerignore'), '*.log\n!keep.log\nsecret.txt\nsub/drop-*\n');
    for (const f of ['a.txt', 'x.log', 'keep.log', 'secret.txt', 'sub/drop-me', 'sub/stay'])
      await writeFile(join(deps, f), `${f}\n`);
    const { kiln, buildkit } = await bothTrees(
      'ignore',
      ctx,
      ['--build-context', `deps=${deps}`],
      ['--local', `deps=${deps}`, '--opt', 'context:deps=local:deps'],
    );
    expect(Object.keys(kiln).sort()).toEqual([
      'deps/.dockerignore',
      'deps/a.txt',
      'deps/keep.log',
      'deps/sub/stay',
    ]);
    expect(kiln).toEqual(buildkit);
  });

  it('git (git daemon) and http named contexts, fetched by the farm', async () => {
    // A repository with two commits; the context names a branch and a subdirectory.
    const repos = join(suite.dir(), 'repos');
    const repo = join(repos, 'app.git');
    const work = join(suite.dir(), 'git-work');
    await mkdir(join(work, 'src'), { recursive: true });
    const git = (...a: string[]) =>
      run('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', ...a], { cwd: work });
    await git('init', '-q', '-b', 'main');
    await writeFile(join(work, 'src/one'), 'one\n');
    await git('add', '.');
    await git('commit', '-q', '-m', 'one');
    await writeFile(join(work, 'src/two'), 'two\n');
    await writeFile(join(work, 'top'), 'top\n');
    await git('add', '.');
    await git('commit', '-q', '-m', 'two');
    await mkdir(repos, { recursive: true });
    await run('git', ['clone', '-q', '--bare', work, repo]);
    const gitPort = await freePort();
    gitDaemon = spawnManaged('git', [
      'daemon',
      '--reuseaddr',
      '--export-all',
      `--base-path=${repos}`,
      '--listen=127.0.0.1',
      `--port=${gitPort}`,
      repos,
    ]);
    await waitFor(
      'git daemon',
      () =>
        new Promise<boolean>((resolve) => {
          const c = connect(gitPort, '127.0.0.1', () => {
            c.end();
            resolve(true);
          }).on('error', () => resolve(false));
        }),
    );
    httpServer = createServer((req, res) => {
      if (req.url === '/files/data.txt') res.end('served over http\n');
      else res.writeHead(404).end();
    });
    await new Promise<void>((r) => httpServer!.listen(0, '127.0.0.1', r));
    const httpPort = (httpServer.address() as { port: number }).port;

    const ctx = await suite.context({
      Dockerfile: [
        'FROM scratch',
        'COPY --from=src / /from-git/',
        'COPY --from=whole /top /from-git-top',
        'COPY --from=web / /from-http/',
        '',
      ].join('\n'),
    });
    const gitUrl = `git://127.0.0.1:${gitPort}/app.git`;
    const httpUrl = `http://127.0.0.1:${httpPort}/files/data.txt`;
    const named = {
      src: `${gitUrl}#main:src`,
      whole: `${gitUrl}#main`,
      web: httpUrl,
    };
    const { kiln, buildkit } = await bothTrees(
      'remote',
      ctx,
      Object.entries(named).flatMap(([k, v]) => ['--build-context', `${k}=${v}`]),
      Object.entries(named).flatMap(([k, v]) => ['--opt', `context:${k}=${v}`]),
    );
    expect(kiln).toEqual({
      'from-git/one': 'one\n',
      'from-git/two': 'two\n',
      'from-git-top': 'top\n',
      'from-http/data.txt': 'served over http\n',
    });
    expect(kiln).toEqual(buildkit);
  });
});
