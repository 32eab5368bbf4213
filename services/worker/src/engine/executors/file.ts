/**
 * FileOp executor: runs `executeFileOp` over snapshots. Inputs whose files an action reads (copy
 * sources, user-name lookups) are mounted read-only; the others are only the base of a target and
 * are not mounted at all (a mount and its unmount cost milliseconds on every step). Each action's
 * mutable target is a snapshot prepared on the input it modifies (an overlay upper, so nothing is
 * copied), or, for a target built on an earlier action's result, a fresh snapshot holding a copy of
 * it. The output target is committed; the others are removed.
 */
import { join } from 'node:path';
import { cloneTree } from '../../fs/index.js';
import { executeFileOp, inputsRead } from '../../ops/file/index.js';
import { newSnapshotName, readSnapshot } from '../../ops/snapshots.js';
import type { SnapshotEnv } from '../../ops/snapshots.js';
import { mountTemp } from '../../snapshot/mount.js';
import type { ExecutorContext, OpExecutor } from '../../ops/executor.js';

interface Target {
  key: string;
  release: () => Promise<void>;
}

export class FileExecutor implements OpExecutor {
  constructor(private readonly env: SnapshotEnv) {}

  async exec(ctx: ExecutorContext): Promise<(string | undefined)[]> {
    const env = this.env;
    const inputDirs: (string | undefined)[] = [];
    const viewOf = new Map<string, string>(); // mounted input dir -> its committed snapshot
    const targets = new Map<string, Target>(); // mutable dir -> its prepared snapshot
    const read = inputsRead(ctx.op.file!, ctx.inputs.length);

    const withInputs = async (i: number): Promise<(string | undefined)[]> => {
      if (i === ctx.inputs.length) {
        const mutable = async (from: string | undefined): Promise<string> => {
          const parent = from === undefined ? undefined : viewOf.get(from);
          const key = newSnapshotName('a');
          const mounts = await env.snapshotter.prepare(key, parent);
          const m = await mountTemp(mounts, join(env.tmpDir, 'mnt'));
          targets.set(m.path, { key, release: m.release });
          if (from !== undefined && parent === undefined) {
            await cloneTree(from, m.path);
          }
          return m.path;
        };
        const discard = async (dir: string): Promise<void> => {
          const t = targets.get(dir);
          if (!t) return;
          targets.delete(dir);
          await t.release();
          await env.snapshotter.remove(t.key).catch(() => undefined);
        };
        try {
          const res = await executeFileOp(ctx.op.file!, inputDirs, {
            mutable,
            discard,
            ...(env.unpack ? { unpack: env.unpack } : {}),
          });
          const outputs: (string | undefined)[] = [];
          for (const [idx, dir] of res.outputs.entries()) {
            const t = targets.get(dir);
            if (!t) {
              // An output that is an input unchanged (no action wrote it): reuse the input.
              outputs[idx] = viewOf.get(dir);
              continue;
            }
            targets.delete(dir);
            await t.release();
            const name = newSnapshotName();
            await env.snapshotter.commit(name, t.key);
            outputs[idx] = name;
          }
          return outputs;
        } finally {
          for (const dir of [...targets.keys()]) await discard(dir);
        }
      }
      const snap = ctx.inputs[i];
      if (snap !== undefined && !read.has(i)) {
        // Never read: a name that stands for the snapshot (nothing exists at that path, so a
        // read by mistake fails rather than reading something else).
        const unread = join(env.tmpDir, 'unmounted', `${i}-${snap}`);
        inputDirs[i] = unread;
        viewOf.set(unread, snap);
        const lease = env.snapshotter.acquire(snap);
        try {
          return await withInputs(i + 1);
        } finally {
          lease.release();
        }
      }
      return readSnapshot(env, snap, async (dir) => {
        inputDirs[i] = snap === undefined ? undefined : dir;
        if (snap !== undefined) viewOf.set(dir, snap);
        return withInputs(i + 1);
      });
    };
    return withInputs(0);
  }
}
