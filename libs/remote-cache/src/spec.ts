/**
 * BuildKit's cache config, `application/vnd.buildkit.cacheconfig.v0`
 * (`cache/remotecache/v1/spec.go`): the JSON that a cache export writes next to its layer blobs.
 * Field names and omitempty rules are BuildKit's: a record's `layers` are its results, `chains`
 * are not written by Kiln, `inputs[i]` lists the records linked as input i (with the selector
 * digest of that link, empty for a content-based link).
 */
export const CACHE_CONFIG_MEDIA_TYPE = 'application/vnd.buildkit.cacheconfig.v0';
export const OCI_INDEX_MEDIA_TYPE = 'application/vnd.oci.image.index.v1+json';
export const OCI_MANIFEST_MEDIA_TYPE = 'application/vnd.oci.image.manifest.v1+json';
/** The annotation that names a layer descriptor's uncompressed digest (containerd's). */
export const UNCOMPRESSED_ANNOTATION = 'containerd.io/uncompressed';
/** BuildKit's creation time annotation on cache layer descriptors. */
export const CREATED_AT_ANNOTATION = 'buildkit/createdat';

export interface LayerAnnotations {
  mediaType?: string;
  diffID?: string;
  size?: number;
  createdAt?: string;
}

export interface CacheLayer {
  blob: string;
  /** Index of the parent layer in `layers`, -1 for none. Go's omitempty: absent means 0. */
  parent?: number;
  annotations?: LayerAnnotations;
}

export interface CacheResult {
  layer: number;
  createdAt?: string;
}

export interface CacheInput {
  selector?: string;
  link: number;
}

export interface CacheRecord {
  layers?: CacheResult[];
  chains?: { layers: number[]; createdAt?: string }[];
  digest: string;
  inputs?: CacheInput[][];
}

export interface CacheConfig {
  layers?: CacheLayer[];
  records?: CacheRecord[];
}

/** An OCI descriptor, as the cache's index lists its blobs. */
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

/** One layer of a result, as Kiln's task results name them (`workerpb.LayerRef`). */
export interface ResultLayer {
  digest: string;
  diffId: string;
  size: number;
  mediaType: string;
}
