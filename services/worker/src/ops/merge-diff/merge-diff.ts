/**
 * MergeOp and DiffOp with BuildKit's layer semantics.
 * - merge(A, B, ...): A's filesystem, then each later input's layers (its changes, deletions
 *   included) applied on top, in order.
 * - diff(L, U): the changes that turn L into U, as one layer (the two trees compared), whiteouts
 *   for what U deleted included. The result's filesystem is that layer applied to nothing; the
 *   layer itself is recorded for the snapshot, so a merge (or an image export) built on the diff
 *   applies its deletions too, as in BuildKit.
 */
import type { BlobStore } from '@kiln/store';
import { applyLayer, writeLayer } from '@kiln/layers';
import type { LayerCache } from '../../exporters/layers.js';
import type { ExecutorContext, OpExecutor } from '../executor.js';
import {
  applyChain,
  buildSnapshot,
  readSnapshot,
  snapshotChain,
  unpackOpts,
} from '../snapshots.js';
import type { RecordedLayers, SnapshotEnv } from '../snapshots.js';

const num = (v: number | { toNumber(): number } | null | undefined): number =>
  v == null ? 0 : typeof v === 'number' ? v : v.toNumber();

export class MergeExecutor implements OpExecutor {
  constructor(
    private readonly env: SnapshotEnv,
    private readonly recorded?: RecordedLayers,
  ) {}

  async exec(ctx: ExecutorContext): Promise<(string | undefined)[]> {
    const snaps = (ctx.op.merge?.inputs ?? [])
      .map((m) => ctx.inputs[num(m.input)])
      .filter((s): s is string => s !== undefined);
    if (snaps.length === 0) return [undefined];
    if (snaps.length === 1) return [snaps[0]];
    const [first, ...rest] = snaps;
    const name = await buildSnapshot(this.env, first, async (dir) => {
      for (const s of rest)
        await applyChain(this.env, await snapshotChain(this.env, s), dir, this.recorded);
    });
    return [name];
  }
}

export class DiffExecutor implements OpExecutor {
  constructor(
    private readonly env: SnapshotEnv,
    private readonly layers: LayerCache,
    private readonly store: BlobStore,
  ) {}

  async exec(ctx: ExecutorContext): Promise<(string | undefined)[]> {
    const d = ctx.op.diff;
    const pick = (i: number): string | undefined => (i < 0 ? undefined : ctx.inputs[i]);
    const lower = pick(num(d?.lower?.input ?? -1));
    const upper = pick(num(d?.upper?.input ?? -1));
    if (upper === undefined) return [undefined];
    if (lower === undefined) return [upper];
    if (lower === upper) return [undefined];
    const desc = await readSnapshot(this.env, lower, (base) =>
      readSnapshot(this.env, upper, (next) =>
        writeLayer(
          this.store,
          { kind: 'compare', baseDir: base, newDir: next },
          { compression: 'gzip' },
        ),
      ),
    );
    const name = await buildSnapshot(this.env, undefined, async (out) => {
      await applyLayer(await this.store.get(desc.digest), out, unpackOpts(this.env));
    });
    await this.layers.set(name, {
      digest: desc.digest,
      diffID: desc.diffID,
      size: desc.size,
      mediaType: desc.mediaType,
    });
    return [name];
  }
}
