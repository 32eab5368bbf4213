/**
 * @kiln/remote-cache: BuildKit's remote cache formats. The cache config
 * (`application/vnd.buildkit.cacheconfig.v0`) written from a graph of cache nodes and read back
 * into a queryable import, and the layouts that carry it (OCI layout, registry manifest list).
 */
export * from './spec.js';
export { exportCache, marshalCacheConfig } from './chains.js';
export type { CacheNode, CacheLink, NodeResult, ExportedCache } from './chains.js';
export { ImportedCache, CacheFormatError, parseCacheConfig, splitCacheIndex } from './imported.js';
export type { ImportedHit } from './imported.js';
export {
  cacheBlobs,
  putDescToLayoutIndex,
  findInLayoutIndex,
  REF_NAME_ANNOTATION,
  OCI_LAYOUT,
} from './layout.js';
export type { CacheBlobs } from './layout.js';

/**
 * The session directory a `type=local` cache import is served as: the client serves
 * `cache_imports[index]`'s `src` under this name; the scheduler reads the layout through it.
 */
export const localCacheImportDir = (index: number): string => `cache-from-${index}`;
export { INLINE_CACHE_KEY, inlineCacheValue, importInlineCache } from './inline.js';
