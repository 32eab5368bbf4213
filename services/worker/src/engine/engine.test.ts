/**
 * The worker engine end to end: real registry (fixture busybox), real overlay snapshots, real crun.
 */
import { mkdtemp, readFile, readlink, rm, writeFile, mkdir, lstat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LinuxAmd64, copy, diff, image, local, marshal, merge, mkfile } from '@kiln/llb';
import type { State } from '@kiln/llb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ProgressEvent } from '../solver/progress.js';
import { Engine } from './engine.js';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE;
let engine: Engine;
let state: string;
let ctxDir: string;

beforeAll(async () => {
  if (!fixture)
    throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through the vitest global setup');
  state = await mkdtemp(join(tmpdir(), 'kiln-engine-'));
  ctxDir = await mkdtemp(join(tmpdir(), 'kiln-ctx-'));
  await writeFile(join(ctxDir, 'package.json'), '{"name":"app"}\n');
  await mkdir(join(ctxDir, 'src'));
  await writeFile(join(ctxDir, 'src/main.sh'), 'echo main\n');
  await writeFile(join(ctxDir, 'notes.txt'), 'not read by the build\n');
  engine = await Engine.open({ stateDir: state });
});
afterAll(async () => {
  await rm(ctxDir, { recursive: true, force: true });
  await rm(state, { recursive: true, force: true });
});

const def = (st: State) => marshal(st, { platform: LinuxAmd64 }).toBytes();

function twoStage(): State {
  const ctx = local('context');
  const base = image(fixture!);
  const deps = base
    .file(copy(ctx, '/package.json', '/app/package.json', { createDestPath: true }))
    .run({ shlex: 'sh -c "cat /app/package.json > /app/deps.txt"' })
    .root();
  const build = deps
    .file(copy(ctx, '/src', '/app/src', { createDestPath: true }))
    .run({ shlex: 'sh -c "sh /app/src/main.sh > /app/out.txt"' })
    .root();
  return base.file(
    copy(build, '/app', '/final', { copyDirContentsOnly: true, createDestPath: true }),
  );
}

describe('Engine', () => {
  it('solves a multi-stage graph with real containers and reads the result', async () => {
    const events: ProgressEvent[] = [];
    const res = await engine.solve(def(twoStage()), {
      session: { localDirs: { context: ctxDir } },
      onProgress: (e) => events.push(e),
    });
    expect(res.stats.cached).toBe(0);
    await engine.read(res.snapshot, async (dir) => {
      expect(await readFile(join(dir, 'final/deps.txt'), 'utf8')).toBe('{"name":"app"}\n');
      expect(await readFile(join(dir, 'final/out.txt'), 'utf8')).toBe('main\n');
      expect(await readlink(join(dir, 'bin/sh'))).toMatch(/busybox/);
    });
    expect(events.some((e) => e.type === 'vertex.started')).toBe(true);
    expect(events.filter((e) => e.type === 'vertex.completed').length).toBe(res.stats.executed);
  });

  it('answers an unchanged rerun from the cache on every vertex', async () => {
    const res = await engine.solve(def(twoStage()), {
      session: { localDirs: { context: ctxDir } },
    });
    expect(res.stats.executed).toBe(0);
    expect(res.stats.cached).toBeGreaterThan(0);
  });

  it('reruns only what reads a changed context file', async () => {
    await writeFile(join(ctxDir, 'notes.txt'), 'changed, but nothing copies it\n');
    const same = await engine.solve(def(twoStage()), {
      session: { localDirs: { context: ctxDir } },
    });
    // The context source itself is re-read (its content changed), nothing that depends on it reruns.
    expect(same.stats.executed).toBe(1);

    await writeFile(join(ctxDir, 'src/main.sh'), 'echo changed\n');
    const events: ProgressEvent[] = [];
    const res = await engine.solve(def(twoStage()), {
      session: { localDirs: { context: ctxDir } },
      onProgress: (e) => events.push(e),
    });
    const ran = events
      .filter((e) => e.type === 'vertex.started')
      .map((e) => (e as { name: string }).name);
    expect(ran).not.toContain('sh -c cat /app/package.json > /app/deps.txt');
    expect(ran).toContain('sh -c sh /app/src/main.sh > /app/out.txt');
    await engine.read(res.snapshot, async (dir) => {
      expect(await readFile(join(dir, 'final/out.txt'), 'utf8')).toBe('changed\n');
    });
  });

  it('merges and diffs with layer semantics', async () => {
    const base = image(fixture!);
    const a = base.run({ shlex: 'sh -c "echo a > /a && rm /bin/ls"' }).root();
    const b = base.file(mkfile('/b', 0o644, 'b'));
    const st = merge([a, diff(base, b)]);
    const res = await engine.solve(def(st));
    await engine.read(res.snapshot, async (dir) => {
      expect(await readFile(join(dir, 'a'), 'utf8')).toBe('a\n');
      expect(await readFile(join(dir, 'b'), 'utf8')).toBe('b');
      await expect(lstat(join(dir, 'bin/ls'))).rejects.toThrow();
      expect((await lstat(join(dir, 'bin/sh'))).isSymbolicLink()).toBe(true);
    });
    const onlyB = await engine.solve(def(diff(base, b)));
    await engine.read(onlyB.snapshot, async (dir) => {
      expect(await readFile(join(dir, 'b'), 'utf8')).toBe('b');
      await expect(lstat(join(dir, 'bin'))).rejects.toThrow();
    });
  });

  it('names the failing vertex with its exit code and output', async () => {
    const st = image(fixture!).run({ shlex: 'sh -c "echo boom >&2; exit 3"' }).root();
    await expect(engine.solve(def(st))).rejects.toMatchObject({
      digest: expect.stringMatching(/^sha256:/) as unknown,
      message: expect.stringContaining('sh -c echo boom >&2; exit 3') as unknown,
    });
  });

  it('fails a local source the session does not provide with a typed error', async () => {
    await expect(
      engine.solve(def(image(fixture!).file(copy(local('missing'), '/x', '/x')))),
    ).rejects.toMatchObject({
      code: 'LOCAL_NOT_FOUND',
    });
  });

  it('applies the deletions of a diff when it is merged (BuildKit layer semantics)', async () => {
    const base = image(fixture!);
    const withFile = base.file(mkfile('/victim', 0o644, 'v'));
    const deleted = withFile.run({ shlex: 'rm /victim' }).root();
    // diff(withFile, deleted) holds a whiteout for /victim; merged onto a tree that has /victim,
    // it deletes it.
    const st = merge([withFile, diff(withFile, deleted)]);
    const res = await engine.solve(def(st));
    await engine.read(res.snapshot, async (dir) => {
      await expect(lstat(join(dir, 'victim'))).rejects.toThrow();
      expect((await lstat(join(dir, 'bin/sh'))).isSymbolicLink()).toBe(true);
    });
  });
});
