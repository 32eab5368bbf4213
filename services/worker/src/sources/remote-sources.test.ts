/**
 * http(s) and git sources run as tasks by the worker's TaskRunner (the path `kiln build` takes):
 * a real HTTP server and a real `git daemon` on loopback, real snapshots.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile, lstat } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { spawnManaged } from '@kiln/common';
import type { ManagedProcess } from '@kiln/common';
import { LinuxAmd64, git, http, marshal } from '@kiln/llb';
import type { State } from '@kiln/llb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FsBlobStore } from '@kiln/store';
import { TaskRunner } from '../node/task-runner.js';
import { runGraph } from '../test-support/graphs.js';

const run = promisify(execFile);
let work: string;
let runner: TaskRunner;
let server: Server;
let httpBase: string;
let daemon: ManagedProcess | undefined;
let gitBase: string;
let served = 'payload v1\n';
let hits = 0;

async function waitPort(port: number): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const ok = await new Promise<boolean>((r) => {
      const s = connect(port, '127.0.0.1', () => {
        s.end();
        r(true);
      });
      s.on('error', () => r(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`port ${port} never opened`);
    await new Promise((r) => setImmediate(r));
  }
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'kiln-remote-src-'));
  runner = await TaskRunner.open({
    stateDir: join(work, 'state'),
    store: new FsBlobStore({ root: join(work, 'store') }),
  });
  server = createServer((req, res) => {
    hits++;
    if (req.url === '/missing') {
      res.statusCode = 404;
      res.end('no');
      return;
    }
    res.setHeader('Last-Modified', 'Wed, 21 Oct 2015 07:28:00 GMT');
    res.end(served);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  httpBase = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;

  const repos = join(work, 'repos');
  const src = join(work, 'src');
  await mkdir(join(src, 'sub'), { recursive: true });
  await writeFile(join(src, 'README.md'), 'readme v1\n');
  await writeFile(join(src, 'sub', 'inner.txt'), 'inner\n');
  const g = (...args: string[]) =>
    run('git', ['-C', src, '-c', 'user.email=t@t', '-c', 'user.name=t', ...args]);
  await run('git', ['init', '-q', '-b', 'main', src]);
  await g('add', '.');
  await g('commit', '-q', '-m', 'one');
  await g('tag', '-a', 'v1', '-m', 'v1');
  await mkdir(repos);
  await run('git', ['clone', '-q', '--bare', src, join(repos, 'repo.git')]);
  // A port the kernel just handed out and released: free unless something races for it.
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const pa = probe.address();
  const port = typeof pa === 'object' && pa ? pa.port : 0;
  await new Promise<void>((r) => probe.close(() => r()));
  // Managed (its own process group, stopped with it): `git daemon` runs git-daemon as a child,
  // which a kill of `git` alone left running after every run.
  daemon = spawnManaged('git', [
    'daemon',
    '--reuseaddr',
    '--export-all',
    `--base-path=${repos}`,
    '--listen=127.0.0.1',
    `--port=${port}`,
    repos,
  ]);
  await waitPort(port);
  gitBase = `git://127.0.0.1:${port}`;
}, 60_000);

afterAll(async () => {
  await daemon?.stop();
  await new Promise<void>((r) => server.close(() => r()));
  await rm(work, { recursive: true, force: true });
});

/** Runs `st` on the task runner and returns its result snapshot. */
const solve = (st: State) => runGraph(runner, marshal(st, { platform: LinuxAmd64 }).toBytes());

describe('http source', () => {
  it('downloads one file with its name, mode and Last-Modified time; a new run sees new content', async () => {
    const st = http(`${httpBase}/dir/file.bin`, { perm: 0o644 });
    await runner.engine.read(await solve(st), async (dir) => {
      expect(await readFile(join(dir, 'file.bin'), 'utf8')).toBe('payload v1\n');
      const s = await stat(join(dir, 'file.bin'));
      expect(s.mode & 0o777).toBe(0o644);
      expect(s.mtime.toISOString()).toBe('2015-10-21T07:28:00.000Z');
    });
    served = 'payload v2\n';
    await runner.engine.read(await solve(st), async (dir) => {
      expect(await readFile(join(dir, 'file.bin'), 'utf8')).toBe('payload v2\n');
    });
  });

  it('accepts content that matches the given checksum and rejects content that does not', async () => {
    const digest = `sha256:${createHash('sha256').update(served).digest('hex')}`;
    const before = hits;
    const named = await solve(http(`${httpBase}/sum`, { checksum: digest, filename: 'named' }));
    expect(hits).toBe(before + 1);
    await runner.engine.read(named, async (dir) => {
      expect(await readFile(join(dir, 'named'), 'utf8')).toBe(served);
    });
    const bad = http(`${httpBase}/other`, { checksum: `sha256:${'0'.repeat(64)}` });
    await expect(solve(bad)).rejects.toMatchObject({ code: 'HTTP_CHECKSUM_MISMATCH' });
    await expect(solve(http(`${httpBase}/missing`))).rejects.toMatchObject({
      code: 'HTTP_FAILED',
    });
  });
});

describe('git source', () => {
  it('checks out a branch without .git, a tag, a subdir, and keeps .git on request', async () => {
    await runner.engine.read(await solve(git(`${gitBase}/repo.git`, 'main')), async (dir) => {
      expect(await readFile(join(dir, 'README.md'), 'utf8')).toBe('readme v1\n');
      await expect(lstat(join(dir, '.git'))).rejects.toThrow();
    });
    await runner.engine.read(await solve(git(`${gitBase}/repo.git`, 'v1:sub')), async (dir) => {
      expect(await readFile(join(dir, 'inner.txt'), 'utf8')).toBe('inner\n');
    });
    const keep = await solve(git(`${gitBase}/repo.git`, 'main', { keepGitDir: true }));
    await runner.engine.read(keep, async (dir) => {
      expect((await lstat(join(dir, '.git'))).isDirectory()).toBe(true);
    });
  });

  it('checks out the commit the branch names at run time', async () => {
    const st = git(`${gitBase}/repo.git`, 'main');
    await runner.engine.read(await solve(st), async (dir) => {
      expect(await readFile(join(dir, 'README.md'), 'utf8')).toBe('readme v1\n');
    });
    const src = join(work, 'src');
    await writeFile(join(src, 'README.md'), 'readme v2\n');
    await run('git', [
      '-C',
      src,
      '-c',
      'user.email=t@t',
      '-c',
      'user.name=t',
      'commit',
      '-q',
      '-am',
      'two',
    ]);
    await run('git', ['-C', src, 'push', '-q', join(work, 'repos', 'repo.git'), 'main']);
    await runner.engine.read(await solve(st), async (dir) => {
      expect(await readFile(join(dir, 'README.md'), 'utf8')).toBe('readme v2\n');
    });
  });

  it('reports a missing ref with a typed error', async () => {
    await expect(solve(git(`${gitBase}/repo.git`, 'no-such-branch'))).rejects.toMatchObject({
      code: 'GIT_REF_NOT_FOUND',
    });
  });
});
