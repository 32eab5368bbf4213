/**
 * MergeOp and DiffOp run as tasks by the worker's TaskRunner (the path `kiln build` takes): real
 * registry (fixture busybox), real overlay snapshots, real crun.
 */
import { lstatSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LinuxAmd64, diff, image, marshal, merge, mkfile } from '@kiln/llb';
import type { State } from '@kiln/llb';
import { FsBlobStore } from '@kiln/store';
import { mount } from '@kiln/sys';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TaskRunner } from '../../node/task-runner.js';
import { runGraph } from '../../test-support/graphs.js';

const fixture = process.env.KILN_TEST_FIXTURE_IMAGE;
let state: string;
let runner: TaskRunner;

beforeAll(async () => {
  if (!fixture)
    throw new Error('KILN_TEST_FIXTURE_IMAGE is not set: run through the vitest global setup');
  state = await mkdtemp(join(tmpdir(), 'kiln-merge-diff-'));
  runner = await TaskRunner.open({
    stateDir: state,
    store: new FsBlobStore({ root: join(state, 'store') }),
  });
});
afterAll(async () => {
  await runner?.close();
  await rm(state, { recursive: true, force: true });
});

/** Runs `st` on the task runner and reads its result. */
async function read(st: State, fn: (dir: string) => Promise<void>): Promise<void> {
  const snapshot = await runGraph(runner, marshal(st, { platform: LinuxAmd64 }).toBytes());
  await runner.engine.read(snapshot, fn);
}

describe('merge and diff', () => {
  it('merges and diffs with layer semantics', async () => {
    const base = image(fixture!);
    const a = base.run({ shlex: 'sh -c "echo a > /a && rm /bin/ls"' }).root();
    const b = base.file(mkfile('/b', 0o644, 'b'));
    await read(merge([a, diff(base, b)]), async (dir) => {
      expect(await readFile(join(dir, 'a'), 'utf8')).toBe('a\n');
      expect(await readFile(join(dir, 'b'), 'utf8')).toBe('b');
      await expect(lstat(join(dir, 'bin/ls'))).rejects.toThrow();
      expect((await lstat(join(dir, 'bin/sh'))).isSymbolicLink()).toBe(true);
    });
    await read(diff(base, b), async (dir) => {
      expect(await readFile(join(dir, 'b'), 'utf8')).toBe('b');
      await expect(lstat(join(dir, 'bin'))).rejects.toThrow();
    });
  });

  it('applies the deletions of a diff when it is merged (BuildKit layer semantics)', async () => {
    const base = image(fixture!);
    const withFile = base.file(mkfile('/victim', 0o644, 'v'));
    const deleted = withFile.run({ shlex: 'rm /victim' }).root();
    // diff(withFile, deleted) holds a whiteout for /victim; merged onto a tree that has /victim,
    // it deletes it.
    await read(merge([withFile, diff(withFile, deleted)]), async (dir) => {
      await expect(lstat(join(dir, 'victim'))).rejects.toThrow();
      expect((await lstat(join(dir, 'bin/sh'))).isSymbolicLink()).toBe(true);
    });
  });
});

describe('TaskRunner.close', () => {
  it('unmounts what is still mounted under its exec and temp dirs, and says how many', async () => {
    const left = join(state, 'tmp', 'mnt', 'm-left');
    await mkdir(left, { recursive: true });
    await mount('tmpfs', left, 'tmpfs', 0, 'size=1m');
    expect(lstatSync(left).dev).not.toBe(lstatSync(join(left, '..')).dev);
    expect(await runner.close()).toBe(1);
    expect(lstatSync(left).dev).toBe(lstatSync(join(left, '..')).dev);
    expect(await runner.close()).toBe(0);
  });
});
