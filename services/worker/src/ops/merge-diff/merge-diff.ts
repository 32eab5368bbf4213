/**
 * MergeOp and DiffOp with BuildKit's layer semantics.
 * - merge(A, B, ...): A's filesystem, then each later input's layers (its changes, deletions
 *   included) applied on top, in order.
 * - diff(L, U): the changes that turn L into U. When L is an ancestor of U (the usual case: U was
 *   built on L) those are U's own layers above L; otherwise the two trees are compared.
 *   The result is committed as a filesystem of its own; deletions in it have nothing to delete.
 */
import { diffLayer, applyLayer } from '../../layers/index.js';
import type { ExecutorContext, OpExecutor } from '../../solver/solver.js';
import { applyChain, buildSnapshot, readSnapshot, snapshotChain } from '../snapshots.js';
import type { SnapshotEnv } from '../snapshots.js';

const num = (v: number | { toNumber(): number } | null | undefined): number =>
  v == null ? 0 : typeof v === 'number' ? v : v.toNumber();

export class MergeExecutor implements OpExecutor {
  constructor(private readonly env: SnapshotEnv) {}

  async exec(ctx: ExecutorContext): Promise<(string | undefined)[]> {
    const snaps = (ctx.op.merge?.inputs ?? [])
      .map((m) => ctx.inputs[num(m.input)])
      .filter((s): s is string => s !== undefined);
    if (snaps.length === 0) return [undefined];
    if (snaps.length === 1) return [snaps[0]];
    const [first, ...rest] = snaps;
    const name = await buildSnapshot(this.env, first, async (dir) => {
      for (const s of rest) await applyChain(this.env, await snapshotChain(this.env, s), dir);
    });
    return [name];
  }
}

export class DiffExecutor implements OpExecutor {
  constructor(private readonly env: SnapshotEnv) {}

  async exec(ctx: ExecutorContext): Promise<(string | undefined)[]> {
    const d = ctx.op.diff;
    const pick = (i: number): string | undefined => (i < 0 ? undefined : ctx.inputs[i]);
    const lower = pick(num(d?.lower?.input ?? -1));
    const upper = pick(num(d?.upper?.input ?? -1));
    if (upper === undefined) return [undefined];
    if (lower === undefined) return [upper];
    if (lower === upper) return [undefined];
    const chain = await snapshotChain(this.env, upper);
    const at = chain.indexOf(lower);
    if (at >= 0) {
      const above = chain.slice(at + 1);
      return [await buildSnapshot(this.env, undefined, (dir) => applyChain(this.env, above, dir))];
    }
    const name = await buildSnapshot(this.env, undefined, (out) =>
      readSnapshot(this.env, lower, (base) =>
        readSnapshot(this.env, upper, async (next) => {
          const layer = diffLayer(
            { kind: 'compare', baseDir: base, newDir: next },
            { compression: 'none' },
          );
          await applyLayer(layer.stream, out);
          await layer.done;
        }),
      ),
    );
    return [name];
  }
}
