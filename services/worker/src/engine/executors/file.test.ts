import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pb } from '@kiln/protocol';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildSnapshot, readSnapshot } from '../../ops/snapshots.js';
import type { SnapshotEnv } from '../../ops/snapshots.js';
import { OverlaySnapshotter } from '../../snapshot/index.js';
import type { Snapshotter } from '../../snapshot/index.js';
import { FileExecutor } from './file.js';

let root: string;
let snapshotter: Snapshotter;
/** The snapshots whose mounts were asked for (what the executor mounted). */
const mounted: string[] = [];
let env: SnapshotEnv;

beforeAll(async () => {
  root = join(tmpdir(), `kiln-file-exec-${process.pid}`);
  await mkdir(root, { recursive: true });
  snapshotter = await OverlaySnapshotter.open({ root: join(root, 'snapshots') });
  // The real snapshotter, its `mounts` calls recorded.
  const recording = new Proxy(snapshotter, {
    get(target, prop, receiver) {
      if (prop === 'mounts')
        return (key: string) => {
          mounted.push(key);
          return target.mounts(key);
        };
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  env = { snapshotter: recording, tmpDir: join(root, 'tmp') };
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

async function snapshotWith(name: string, files: Record<string, string>): Promise<void> {
  await buildSnapshot(
    env,
    undefined,
    async (dir) => {
      for (const [p, c] of Object.entries(files)) {
        await mkdir(join(dir, p, '..'), { recursive: true });
        await writeFile(join(dir, p), c);
      }
    },
    name,
  );
}

const ctx = (op: pb.IFileOp, inputs: string[]): Parameters<FileExecutor['exec']>[0] => ({
  digest: 'sha256:test',
  op: pb.Op.create({ file: op }),
  metadata: undefined,
  inputs,
  session: {
    localDirs: {},
    secrets: () => Promise.reject(new Error('none')),
    ssh: () => Promise.reject(new Error('none')),
  },
  signal: new AbortController().signal,
  log: () => undefined,
});

describe('FileExecutor', () => {
  it('mounts only the inputs an action reads: a copy mounts its source, not its base', async () => {
    await snapshotWith('base', { 'etc/keep': 'kept' });
    await snapshotWith('src', { 'app/out.txt': 'out' });
    mounted.length = 0;
    const op: pb.IFileOp = {
      actions: [
        {
          input: 0,
          secondaryInput: 1,
          output: 0,
          copy: {
            src: '/app/out.txt',
            dest: '/out/',
            createDestPath: true,
            mode: -1,
            timestamp: -1,
          },
        },
      ],
    };
    const [out] = await new FileExecutor(env).exec(ctx(op, ['base', 'src']));
    expect(mounted).toEqual(['src']);
    expect(await snapshotter.parentChain(out!)).toEqual(['base']);
    await readSnapshot(env, out, async (dir) => {
      expect(await readFile(join(dir, 'out/out.txt'), 'utf8')).toBe('out');
      expect(await readFile(join(dir, 'etc/keep'), 'utf8')).toBe('kept');
    });
  });

  it('mounts nothing for an action that only writes its base (mkdir)', async () => {
    mounted.length = 0;
    const op: pb.IFileOp = {
      actions: [
        {
          input: 0,
          secondaryInput: -1,
          output: 0,
          mkdir: { path: '/app', mode: 0o755, makeParents: true, timestamp: -1 },
        },
      ],
    };
    const [out] = await new FileExecutor(env).exec(ctx(op, ['base']));
    expect(mounted).toEqual([]);
    await readSnapshot(env, out, async (dir) => {
      expect(await readFile(join(dir, 'etc/keep'), 'utf8')).toBe('kept');
      expect((await stat(join(dir, 'app'))).isDirectory()).toBe(true);
    });
  });
});
