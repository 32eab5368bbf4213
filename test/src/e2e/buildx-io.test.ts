/**
 * `kiln build`'s inputs and outputs beyond a context directory, as `docker buildx build`: `-f -`
 * (the Dockerfile on stdin), `-` (a tar context, or a lone Dockerfile, on stdin), `-o -` and
 * `dest=-` (the tar on stdout), and git URL contexts (`git://host/repo.git#ref:subdir`, served by
 * a real `git daemon`). `kiln` runs as its own process (bundled from source) on the local farm
 * (its daemon bundled from source), against the fixture busybox image.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { spawnManaged } from '@kiln/common';
import type { ManagedProcess } from '@kiln/common';
import { bundleEntries, freePort, makeTempDir, waitFor } from '../harness/index.js';
import { bundleFarmDaemon } from './local-farm-daemon.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE;
const run = promisify(execFile);

let tmp: { dir: string; remove: () => void };
let kilnBin = '';
let gitd: ManagedProcess | undefined;
let gitPort = 0;

/** `kiln args` as a process with `stdin` fed in; its stdout as bytes, stderr as text. */
function kiln(
  args: string[],
  stdin: Buffer | string = '',
): Promise<{ code: number | null; stdout: Buffer; stderr: string }> {
  const child = spawn(process.execPath, [kilnBin, ...args], {
    env: process.env,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const out: Buffer[] = [];
  let err = '';
  child.stdout.on('data', (d: Buffer) => out.push(d));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  child.stdin.end(stdin);
  return new Promise((r) =>
    child.once('close', (code) => r({ code, stdout: Buffer.concat(out), stderr: err })),
  );
}

const buildArgs = (ctx: string, ...extra: string[]): string[] => [
  'build',
  ctx,
  '--progress',
  'plain',
  '--build-arg',
  `BASE=${fixture}`,
  ...extra,
];

/** A directory holding `files`. */
function dir(name: string, files: Record<string, string>): string {
  const d = join(tmp.dir, name);
  for (const [f, body] of Object.entries(files)) {
    mkdirSync(join(d, f, '..'), { recursive: true });
    writeFileSync(join(d, f), body);
  }
  return d;
}

/** The file `name` inside the tar `bytes`. */
async function fromTar(bytes: Buffer, name: string): Promise<string> {
  const f = join(tmp.dir, `out-${Math.random().toString(36).slice(2)}.tar`);
  writeFileSync(f, bytes);
  return (await run('tar', ['-xOf', f, name])).stdout;
}

const DOCKERFILE =
  'ARG BASE\nFROM ${BASE} AS base\nCOPY a.txt /a.txt\nRUN cat /a.txt > /b.txt\nFROM scratch\nCOPY --from=base /b.txt /b.txt\n';

beforeAll(async () => {
  if (!fixture)
    throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through the vitest global setup');
  tmp = makeTempDir('buildx-io');
  process.env.KILN_STATE_DIR = join(tmp.dir, 'state');
  process.env.KILN_FARM_DAEMON = await bundleFarmDaemon(join(tmp.dir, 'bundle'));
  kilnBin = (await bundleEntries({ kiln: 'test/src/e2e/kiln-bin.ts' }, join(tmp.dir, 'bin'))).kiln!;

  // A repository with the build in a subdirectory of a branch, served by git daemon.
  const repo = dir('git/repo.git', { README: 'main\n' });
  const g = (...a: string[]) =>
    run('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', ...a], { cwd: repo });
  await g('init', '--quiet', '--initial-branch=main');
  await g('add', '.');
  await g('commit', '--quiet', '-m', 'main');
  await g('checkout', '--quiet', '-b', 'feature');
  dir('git/repo.git/sub', { Dockerfile: DOCKERFILE, 'a.txt': 'from git\n' });
  await g('add', '.');
  await g('commit', '--quiet', '-m', 'feature');
  await g('checkout', '--quiet', 'main');
  gitPort = await freePort();
  gitd = spawnManaged('git', [
    'daemon',
    '--export-all',
    '--reuseaddr',
    `--base-path=${join(tmp.dir, 'git')}`,
    '--listen=127.0.0.1',
    `--port=${gitPort}`,
    join(tmp.dir, 'git'),
  ]);
  await waitFor('git daemon', () =>
    run('git', ['ls-remote', `git://127.0.0.1:${gitPort}/repo.git`]).then(
      () => true,
      () => false,
    ),
  );
}, 120_000);

afterAll(async () => {
  await kiln(['farm', 'stop']);
  await gitd?.stop();
  delete process.env.KILN_STATE_DIR;
  delete process.env.KILN_FARM_DAEMON;
  tmp?.remove();
});

describe('kiln build inputs and outputs', () => {
  it('-f - reads the Dockerfile from stdin; -o - writes the tar to stdout', async () => {
    const ctx = dir('ctx-f', { 'a.txt': 'from stdin dockerfile\n' });
    const r = await kiln(buildArgs(ctx, '-f', '-', '-o', '-'), DOCKERFILE);
    expect(r.stderr).toContain('DONE');
    expect(r.code).toBe(0);
    expect(await fromTar(r.stdout, 'b.txt')).toBe('from stdin dockerfile\n');
  });

  it('- reads a tar context from stdin; type=tar,dest=- writes to stdout', async () => {
    const ctx = dir('ctx-tar', { Dockerfile: DOCKERFILE, 'a.txt': 'from a tar\n' });
    const tar = (
      await promisify(execFile)('tar', ['-C', ctx, '-cf', '-', '.'], { encoding: 'buffer' })
    ).stdout;
    const r = await kiln(buildArgs('-', '-o', 'type=tar,dest=-'), tar);
    expect(r.code).toBe(0);
    expect(await fromTar(r.stdout, 'b.txt')).toBe('from a tar\n');
  });

  it('- with a lone Dockerfile on stdin builds with an empty context', async () => {
    const out = join(tmp.dir, 'out-lone');
    const r = await kiln(
      buildArgs('-', '-o', `type=local,dest=${out}`),
      'ARG BASE\nFROM ${BASE}\nRUN echo lone > /c.txt\nFROM scratch\nCOPY --from=0 /c.txt /\n',
    );
    expect(r.stderr).not.toContain('ERROR');
    expect(r.code).toBe(0);
    expect(readFileSync(join(out, 'c.txt'), 'utf8')).toBe('lone\n');
  });

  it('a git URL context builds the ref and subdirectory it names', async () => {
    const out = join(tmp.dir, 'out-git');
    const url = `git://127.0.0.1:${gitPort}/repo.git#feature:sub`;
    const r = await kiln(buildArgs(url, '-o', `type=local,dest=${out}`));
    expect(r.stderr).not.toContain('ERROR');
    expect(r.code).toBe(0);
    expect(readFileSync(join(out, 'b.txt'), 'utf8')).toBe('from git\n');
    const bad = await kiln(buildArgs(`git://127.0.0.1:${gitPort}/repo.git#nosuchref`));
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain(`git context git://127.0.0.1:${gitPort}/repo.git#nosuchref`);
  });

  it('stdin cannot serve both the context and the Dockerfile', async () => {
    const r = await kiln(buildArgs('-', '-f', '-'));
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('cannot both be read from stdin');
  });
});
