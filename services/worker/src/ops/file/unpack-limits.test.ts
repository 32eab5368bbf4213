/**
 * ADD of an archive bomb through the worker's TaskRunner (the path `kiln build` takes): real
 * overlay snapshots; the worker's unpack limits stop it typed and the partial snapshot goes.
 */
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { LinuxAmd64, copy, marshal, mkfile, scratch } from '@kiln/llb';
import { KilnError } from '@kiln/protocol';
import { FsBlobStore } from '@kiln/store';
import { buildTar, treeBytes } from '@kiln/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TaskRunner } from '../../node/task-runner.js';
import { runGraph } from '../../test-support/graphs.js';

const MiB = 1024 * 1024;
let state: string;
let runner: TaskRunner;

beforeAll(async () => {
  state = await mkdtemp(join(tmpdir(), 'kiln-unpack-limits-'));
  runner = await TaskRunner.open({
    stateDir: state,
    store: new FsBlobStore({ root: join(state, 'store') }),
    unpack: { maxBytes: 8 * MiB, maxEntries: 1000 },
  });
});
afterAll(async () => {
  await rm(state, { recursive: true, force: true });
});

/**
 * Bytes under the snapshotter's root (snapshots and its temp dir), but its metadata log, which
 * grows by a line per change until it is compacted.
 */
async function snapshotBytes(): Promise<number> {
  const root = join(state, 'snapshots');
  let log = 0;
  for (const e of await readdir(root, { withFileTypes: true, recursive: true }))
    if (e.isFile() && e.name === 'metadata.jsonl')
      log += (await stat(join(e.parentPath, e.name))).size;
  return (await treeBytes(root)) - log;
}

describe('ADD of an archive bomb', () => {
  it('fails FILEOP_UNPACK_LIMIT_EXCEEDED at the limit and gives the space back', async () => {
    // 32 MiB of zeros in 8 files, a few kB as .tar.gz.
    const entries = Array.from({ length: 8 }, (_, i) => ({
      name: `z${i}`,
      content: '\0'.repeat(4 * MiB),
    }));
    const gz = gzipSync(await buildTar(entries));
    expect(gz.length).toBeLessThan(128 * 1024);
    const ctx = scratch().file(mkfile('/bomb.tar.gz', 0o644, gz));
    // First the context alone: the space it takes is counted before the ADD.
    const salt = 'bomb';
    await runGraph(runner, marshal(ctx, { platform: LinuxAmd64 }).toBytes(), { salt });
    const before = await snapshotBytes();

    const add = scratch().file(
      copy(ctx, '/bomb.tar.gz', '/out/', { attemptUnpack: true, createDestPath: true }),
    );
    const err = await runGraph(runner, marshal(add, { platform: LinuxAmd64 }).toBytes(), {
      salt,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KilnError);
    expect((err as KilnError).code).toBe('FILEOP_UNPACK_LIMIT_EXCEEDED');
    // The task's error names the limit and the entry; the scheduler adds the step's name.
    expect((err as KilnError).message).toMatch(/more than 8388608 bytes .*maxBytes.*"z2"/);
    // The two files (8 MiB) written before the limit went with the failed step's snapshot; what
    // remains new is at most the context's own snapshot again (a few kB).
    expect((await snapshotBytes()) - before).toBeLessThanOrEqual(before);

    // Under the limit the same ADD unpacks.
    const small = gzipSync(await buildTar(entries.slice(0, 1)));
    const ok = scratch().file(
      copy(scratch().file(mkfile('/ok.tar.gz', 0o644, small)), '/ok.tar.gz', '/out/', {
        attemptUnpack: true,
        createDestPath: true,
      }),
    );
    const snap = await runGraph(runner, marshal(ok, { platform: LinuxAmd64 }).toBytes());
    await runner.engine.read(snap, async (dir) => {
      expect((await stat(join(dir, 'out/z0'))).size).toBe(4 * MiB);
    });
  });
});
