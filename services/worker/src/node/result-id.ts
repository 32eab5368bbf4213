/**
 * Result ids: how a task's output is named on the bus. An output's id is the OCI chain ID of its
 * layers (`sha256(chain(n-1) + " " + diffID(n))`, the base layer's chain ID being its diffID), so
 * it names the content, not the attempt that made it: two workers holding the same id hold the
 * same filesystem, and a worker that applies an input's layers gets a snapshot named by the same
 * chain ID as the image source's layer snapshots. The empty filesystem (no layers) is
 * {@link EMPTY_RESULT_ID}.
 */
import { createHash } from 'node:crypto';

export const EMPTY_RESULT_ID = 'empty';

/** Chain IDs of each prefix of `diffIDs` (base first). */
export function chainIds(diffIDs: readonly string[]): string[] {
  const out: string[] = [];
  let chain = '';
  for (const d of diffIDs) {
    chain =
      chain === '' ? d : `sha256:${createHash('sha256').update(`${chain} ${d}`).digest('hex')}`;
    out.push(chain);
  }
  return out;
}

/** The result id of a filesystem made of these layers. */
export function resultIdOf(diffIDs: readonly string[]): string {
  return chainIds(diffIDs).at(-1) ?? EMPTY_RESULT_ID;
}

/** The committed snapshot name of a layer chain (the image source uses the same names). */
export function layerSnapshotName(chainId: string): string {
  return `layer-${chainId.slice('sha256:'.length)}`;
}
