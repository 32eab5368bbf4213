/**
 * The cache graph in BuildKit's terms, and its export to a cache config
 * (`cache/remotecache/v1/chains.go`). A {@link CacheNode} is one cache key of a vertex output:
 * its record digest (`rootKey(cacheMapDigest, output)`) and, per input, the keys it is linked
 * from (the input's keys under the op's selector digest, and content-based keys with none).
 * Nodes are built by the solver beside its own keys; the export writes every node reachable
 * from the roots asked for, each once, with the results (layer chains) of those that have one.
 */
import type { CacheConfig, CacheLayer, CacheRecord, Descriptor, ResultLayer } from './spec.js';
import { CREATED_AT_ANNOTATION, UNCOMPRESSED_ANNOTATION } from './spec.js';

export interface CacheNode {
  /** The record digest. */
  readonly digest: string;
  /** Per input of the op: the nodes it is linked from, with the link's selector. */
  readonly inputs: readonly (readonly CacheLink[])[];
}

export interface CacheLink {
  node: CacheNode;
  /** BuildKit's selector digest of the link ('' for none). */
  selector: string;
}

/** A result to write: the full layer chain of the output, base first. */
export interface NodeResult {
  layers: readonly ResultLayer[];
  /** RFC 3339. */
  createdAt: string;
}

/** A cache config and the layer blobs it names (the descriptors an index lists). */
export interface ExportedCache {
  config: CacheConfig;
  layers: Descriptor[];
}

/**
 * Writes the nodes reachable from `roots` as a cache config; `results` gives the nodes that
 * carry a result (mode=max: every vertex's; mode=min: the build result's).
 */
export function exportCache(
  roots: readonly CacheNode[],
  results: ReadonlyMap<CacheNode, NodeResult>,
): ExportedCache {
  const layers: CacheLayer[] = [];
  const descriptors: Descriptor[] = [];
  const layerIndex = new Map<string, number>();
  const addChain = (chain: readonly ResultLayer[], createdAt: string): number => {
    let parent = -1;
    let key = '';
    for (const l of chain) {
      key += `${l.digest}/`;
      let i = layerIndex.get(key);
      if (i === undefined) {
        i = layers.length;
        layers.push({
          blob: l.digest,
          parent,
          annotations: {
            mediaType: l.mediaType,
            diffID: l.diffId,
            size: l.size,
            createdAt,
          },
        });
        layerIndex.set(key, i);
        if (!descriptors.some((d) => d.digest === l.digest))
          descriptors.push({
            mediaType: l.mediaType,
            digest: l.digest,
            size: l.size,
            annotations: {
              [UNCOMPRESSED_ANNOTATION]: l.diffId,
              [CREATED_AT_ANNOTATION]: createdAt,
            },
          });
      }
      parent = i;
    }
    return parent;
  };

  const records: CacheRecord[] = [];
  const recordIndex = new Map<CacheNode, number>();
  const bySignature = new Map<string, number>();
  // Iterative post-order: inputs are written before the records linking them.
  const visit = (root: CacheNode): void => {
    const stack: { node: CacheNode; expanded: boolean }[] = [{ node: root, expanded: false }];
    while (stack.length > 0) {
      const top = stack.pop()!;
      if (recordIndex.has(top.node)) continue;
      if (!top.expanded) {
        stack.push({ node: top.node, expanded: true });
        for (const links of top.node.inputs)
          for (const l of links)
            if (!recordIndex.has(l.node)) stack.push({ node: l.node, expanded: false });
        continue;
      }
      const inputs = top.node.inputs.map((links) =>
        links.map((l) => ({
          ...(l.selector ? { selector: l.selector } : {}),
          link: recordIndex.get(l.node)!,
        })),
      );
      const res = results.get(top.node);
      const layer = res && res.layers.length > 0 ? addChain(res.layers, res.createdAt) : undefined;
      const sig = JSON.stringify([top.node.digest, inputs, layer]);
      let idx = bySignature.get(sig);
      if (idx === undefined) {
        idx = records.length;
        records.push({
          digest: top.node.digest,
          ...(layer !== undefined ? { layers: [{ layer, createdAt: res!.createdAt }] } : {}),
          ...(inputs.length > 0 ? { inputs } : {}),
        });
        bySignature.set(sig, idx);
      }
      recordIndex.set(top.node, idx);
    }
  };
  for (const r of roots) visit(r);
  return { config: { layers, records }, layers: descriptors };
}

/** The cache config as BuildKit writes it (Go's omitempty: a parent index of 0 is left out). */
export function marshalCacheConfig(c: CacheConfig): string {
  return JSON.stringify({
    layers: (c.layers ?? []).map((l) => ({
      blob: l.blob,
      ...(l.parent ? { parent: l.parent } : {}),
      ...(l.annotations ? { annotations: l.annotations } : {}),
    })),
    records: c.records ?? [],
  });
}
