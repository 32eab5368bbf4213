/**
 * BuildKit's inline cache (`cache/remotecache/inline`): the cache records travel in the image
 * config, under `moby.buildkit.cache.v0`, as the base64 of their JSON (Go's `[]byte`), with each
 * result's layer index being the position of its top layer in the image's own layers. Importing
 * reads it back from a pulled image config: the image's layers are the chain, their diffIDs the
 * config's `rootfs.diff_ids`.
 */
import type { ExportedCache } from './chains.js';
import { CacheFormatError, ImportedCache } from './imported.js';
import type { CacheRecord, Descriptor } from './spec.js';
import { UNCOMPRESSED_ANNOTATION } from './spec.js';

export const INLINE_CACHE_KEY = 'moby.buildkit.cache.v0';

/**
 * The value of `moby.buildkit.cache.v0` for an image whose layers are the chain of the results in
 * `e` (the build result's), or undefined when no record has a result.
 */
export function inlineCacheValue(e: ExportedCache): string | undefined {
  const layers = e.config.layers ?? [];
  if (layers.length === 0) return undefined;
  const depth = new Map<number, number>();
  const position = (i: number): number => {
    let n = -1;
    for (let j = i, guard = 0; j !== -1 && guard <= layers.length; guard++) {
      n++;
      j = layers[j]?.parent ?? -1;
    }
    depth.set(i, n);
    return n;
  };
  const records: CacheRecord[] = (e.config.records ?? []).map((r) => ({
    ...(r.layers
      ? {
          layers: r.layers.map((res) => ({
            ...res,
            layer: depth.get(res.layer) ?? position(res.layer),
          })),
        }
      : {}),
    digest: r.digest,
    ...(r.inputs ? { inputs: r.inputs } : {}),
  }));
  return Buffer.from(JSON.stringify(records)).toString('base64');
}

/**
 * The inline cache of one pulled image (its config and manifest layers), or undefined when its
 * config carries none.
 */
export function importInlineCache(
  config: Record<string, unknown>,
  layers: readonly Descriptor[],
): ImportedCache | undefined {
  const v = config[INLINE_CACHE_KEY];
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw new CacheFormatError(`${INLINE_CACHE_KEY} is not a string`);
  let records: CacheRecord[];
  try {
    records = JSON.parse(Buffer.from(v, 'base64').toString()) as CacheRecord[];
  } catch (e) {
    throw new CacheFormatError(`${INLINE_CACHE_KEY} is not base64 JSON`, e);
  }
  if (!Array.isArray(records)) throw new CacheFormatError(`${INLINE_CACHE_KEY} is not a list`);
  const diffIds = (config.rootfs as { diff_ids?: unknown } | undefined)?.diff_ids;
  if (!Array.isArray(diffIds) || diffIds.length !== layers.length)
    throw new CacheFormatError('the image config has no diff_ids for its layers');
  const descs = layers.map((l, i) => ({
    ...l,
    annotations: { ...l.annotations, [UNCOMPRESSED_ANNOTATION]: String(diffIds[i]) },
  }));
  return new ImportedCache(
    { layers: descs.map((l, i) => ({ blob: l.digest, parent: i - 1 })), records },
    descs,
  );
}
