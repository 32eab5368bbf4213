/**
 * An imported cache config, queried as BuildKit's remote cache storage does
 * (`cache/remotecache/v1/cachestorage.go`): a record with no inputs is found by its digest; any
 * other is found by walking links from the records matched for its inputs (input index, the
 * linking record's digest, the selector), and must be reached through every input. A node
 * matches the records so found; a hit is a matched record with a result.
 */
import { KilnError } from '@kiln/protocol';
import type { CacheNode } from './chains.js';
import type { CacheConfig, CacheRecord, Descriptor, ResultLayer } from './spec.js';
import { CACHE_CONFIG_MEDIA_TYPE, UNCOMPRESSED_ANNOTATION } from './spec.js';

export class CacheFormatError extends KilnError {
  constructor(message: string, cause?: unknown) {
    super('CACHE_IMPORT_INVALID', message, { cause });
  }
}

export interface ImportedHit {
  layers: ResultLayer[];
  createdAt: string;
}

export class ImportedCache {
  readonly #records: CacheRecord[];
  readonly #roots = new Map<string, number[]>();
  /** linksFrom[j]: `${input}|${digest}|${selector}` -> records linking record j so. */
  readonly #links: Map<string, number[]>[];
  readonly #matched = new WeakMap<CacheNode, number[]>();
  readonly #layers: (ResultLayer & { parent: number })[];

  constructor(config: CacheConfig, descriptors: readonly Descriptor[]) {
    this.#records = config.records ?? [];
    const byDigest = new Map(descriptors.map((d) => [d.digest, d]));
    const count = (config.layers ?? []).length;
    // A parent may come after its child (BuildKit writes them so): only the bounds are checked
    // here, cycles when a chain is followed.
    this.#layers = (config.layers ?? []).map((l, i) => {
      const d = byDigest.get(l.blob);
      const diffId = l.annotations?.diffID ?? d?.annotations?.[UNCOMPRESSED_ANNOTATION] ?? '';
      const parent = l.parent ?? 0;
      if (!l.blob || !diffId || parent < -1 || parent >= count || parent === i)
        throw new CacheFormatError(`cache layer ${i} (${l.blob}) has no blob, diffID or parent`);
      return {
        digest: l.blob,
        diffId,
        size: d?.size ?? l.annotations?.size ?? 0,
        mediaType: d?.mediaType ?? l.annotations?.mediaType ?? '',
        parent,
      };
    });
    this.#links = this.#records.map(() => new Map<string, number[]>());
    for (const [i, r] of this.#records.entries()) {
      if (!r.inputs || r.inputs.length === 0) {
        this.#roots.set(r.digest, [...(this.#roots.get(r.digest) ?? []), i]);
        continue;
      }
      for (const [input, links] of r.inputs.entries())
        for (const l of links) {
          const from = this.#links[l.link];
          if (!from)
            throw new CacheFormatError(`cache record ${i} links a missing record ${l.link}`);
          const k = `${input}|${r.digest}|${l.selector ?? ''}`;
          from.set(k, [...(from.get(k) ?? []), i]);
        }
    }
  }

  /** The records `node` matches (memoized per node). */
  match(node: CacheNode): number[] {
    const known = this.#matched.get(node);
    if (known) return known;
    let out: number[];
    if (node.inputs.length === 0) out = this.#roots.get(node.digest) ?? [];
    else {
      let acc: Set<number> | undefined;
      for (const [i, links] of node.inputs.entries()) {
        const cand = new Set<number>();
        for (const l of links)
          for (const j of this.match(l.node))
            for (const r of this.#links[j]?.get(`${i}|${node.digest}|${l.selector}`) ?? [])
              cand.add(r);
        acc = acc ? new Set([...acc].filter((r) => cand.has(r))) : cand;
        if (acc.size === 0) break;
      }
      out = [...(acc ?? [])];
    }
    this.#matched.set(node, out);
    return out;
  }

  /** The newest result of a record `node` matches, as its full layer chain. */
  hit(node: CacheNode): ImportedHit | undefined {
    let best: ImportedHit | undefined;
    for (const i of this.match(node)) {
      for (const res of this.#records[i]?.layers ?? []) {
        const createdAt = res.createdAt ?? '';
        if (best && best.createdAt >= createdAt) continue;
        best = { layers: this.#chain(res.layer), createdAt };
      }
    }
    return best;
  }

  #chain(top: number): ResultLayer[] {
    const out: ResultLayer[] = [];
    for (let i = top, n = 0; i >= 0; n++) {
      const l = this.#layers[i];
      if (!l || n > this.#layers.length)
        throw new CacheFormatError(`bad cache layer chain at ${i}`);
      out.unshift({ digest: l.digest, diffId: l.diffId, size: l.size, mediaType: l.mediaType });
      i = l.parent;
    }
    return out;
  }
}

/** Parses a cache config blob. */
export function parseCacheConfig(text: string): CacheConfig {
  try {
    const c = JSON.parse(text) as CacheConfig;
    if (typeof c !== 'object' || c === null) throw new Error('not an object');
    return c;
  } catch (e) {
    throw new CacheFormatError(`the cache config is not valid JSON: ${String(e)}`, e);
  }
}

/** The config descriptor and layer descriptors of a cache index (BuildKit's manifest list). */
export function splitCacheIndex(indexJson: string): { config: Descriptor; layers: Descriptor[] } {
  let idx: { manifests?: Descriptor[] };
  try {
    idx = JSON.parse(indexJson) as { manifests?: Descriptor[] };
  } catch (e) {
    throw new CacheFormatError('the cache index is not valid JSON', e);
  }
  const all = idx.manifests ?? [];
  const config = all.find((d) => d.mediaType === CACHE_CONFIG_MEDIA_TYPE);
  if (!config) throw new CacheFormatError(`the cache index has no ${CACHE_CONFIG_MEDIA_TYPE}`);
  return { config, layers: all.filter((d) => d !== config) };
}
