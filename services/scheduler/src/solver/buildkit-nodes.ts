/**
 * A vertex's place in BuildKit's cache graph (`@kiln/remote-cache` CacheNode), computed beside
 * Kiln's own key: what `--cache-to` writes and `--cache-from` is matched against. A node's digest
 * is BuildKit's record digest (`rootKey(cacheMapDigest, output)`, `@kiln/llb`
 * buildkitCacheMap); its links are the input's nodes under the op's selector digest, plus, for an
 * input keyed by content, a content node (`rootKey(checksum, -1)`, BuildKit's slow key) with
 * BuildKit's contenthash of the selected paths when the holder could compute it (the worker's
 * `buildkit-contenthash.ts`), else Kiln's checksum, which meets only Kiln's own exports.
 * A vertex without a BuildKit cache map (a local source, git, http, merge, diff), or with an
 * input that has no node, has none: nothing that depends on it is exported or matched.
 */
import { buildkitCacheMap, buildkitRecordDigest, imageConfigCacheDigest } from '@kiln/llb';
import type { CacheLink, CacheNode } from '@kiln/remote-cache';
import type { TaskResult } from '@kiln/bus';
import type { pb } from '@kiln/protocol';
import type { ContentDep } from './fast-key.js';

const num = (v: number | { toNumber(): number } | null | undefined): number =>
  v == null ? 0 : typeof v === 'number' ? v : v.toNumber();

/** How many outputs an op has (exec: its mounts with an output; file: actions with one). */
function outputCount(op: pb.IOp): number {
  if (op.exec) return (op.exec.mounts ?? []).filter((m) => num(m.output) >= 0).length;
  if (op.file) return (op.file.actions ?? []).filter((a) => num(a.output) >= 0).length;
  return 1;
}

/** The nodes of each output of `op`, from its inputs' nodes (`done`, per output). */
export function buildkitNodes(
  op: pb.IOp,
  platform: pb.IPlatform,
  done: ReadonlyMap<string, readonly (readonly CacheNode[])[]>,
  content: readonly (ContentDep | undefined)[] | undefined,
): CacheNode[][] {
  const cm = buildkitCacheMap(op, platform);
  if (!cm) return [];
  const inputs: CacheLink[][] = [];
  for (const [i, inp] of (op.inputs ?? []).entries()) {
    const selector = cm.deps[i]?.selector ?? '';
    const links: CacheLink[] = (done.get(inp.digest ?? '')?.[num(inp.index)] ?? []).map((node) => ({
      node,
      selector,
    }));
    const c = content?.[i];
    // BuildKit's contenthash when it could be had, else Kiln's (meets only Kiln's exports).
    if (c)
      links.push({
        node: { digest: buildkitRecordDigest(c.buildkitDigest ?? c.digest, -1), inputs: [] },
        selector: '',
      });
    if (links.length === 0) return [];
    inputs.push(links);
  }
  return Array.from({ length: outputCount(op) }, (_, out) => [
    { digest: buildkitRecordDigest(cm.digest, out), inputs },
  ]);
}

/**
 * The nodes once the vertex is done: an image source gains its config key (the chain id of its
 * layers, which is Kiln's result id), as BuildKit's second cache map round.
 */
export function resultNodes(op: pb.IOp, nodes: CacheNode[][], r: TaskResult): CacheNode[][] {
  const id = r.outputs[0]?.resultId ?? '';
  const first = nodes[0];
  if (!first || !op.source?.identifier?.startsWith('docker-image://') || !id.startsWith('sha256:'))
    return nodes;
  return [[...first, { digest: buildkitRecordDigest(imageConfigCacheDigest(id), 0), inputs: [] }]];
}
