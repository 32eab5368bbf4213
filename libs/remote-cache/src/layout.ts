/**
 * The blobs of a cache export (`cache/remotecache/export.go`): the cache config blob, and an OCI
 * index (BuildKit's "manifest list" of the cache) listing every layer blob and the config. A
 * `type=local` cache is an OCI layout holding them, whose `index.json` names that index by the
 * tag (`org.opencontainers.image.ref.name`, default `latest`); a registry cache pushes the index
 * as the manifest of `ref`.
 */
import { createHash } from 'node:crypto';
import type { ExportedCache } from './chains.js';
import { marshalCacheConfig } from './chains.js';
import { CacheFormatError } from './imported.js';
import type { Descriptor } from './spec.js';
import { CACHE_CONFIG_MEDIA_TYPE, OCI_INDEX_MEDIA_TYPE } from './spec.js';

export const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';
export const OCI_LAYOUT = '{"imageLayoutVersion":"1.0.0"}';

const digestOf = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

export interface CacheBlobs {
  config: Buffer;
  configDesc: Descriptor;
  index: Buffer;
  indexDesc: Descriptor;
}

/** The config and index blobs of an export. */
export function cacheBlobs(e: ExportedCache): CacheBlobs {
  const config = Buffer.from(marshalCacheConfig(e.config));
  const configDesc: Descriptor = {
    mediaType: CACHE_CONFIG_MEDIA_TYPE,
    digest: digestOf(config),
    size: config.length,
  };
  const index = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_INDEX_MEDIA_TYPE,
      manifests: [...e.layers, configDesc],
    }),
  );
  return {
    config,
    configDesc,
    index,
    indexDesc: { mediaType: OCI_INDEX_MEDIA_TYPE, digest: digestOf(index), size: index.length },
  };
}

/**
 * An OCI layout's `index.json` with `desc` tagged `tag`, keeping the other entries of `existing`
 * (BuildKit's ociindex.PutDescToIndex: an entry with the same tag is replaced).
 */
export function putDescToLayoutIndex(
  existing: string | undefined,
  desc: Descriptor,
  tag: string,
): string {
  let idx: { schemaVersion?: number; manifests?: Descriptor[] } = { schemaVersion: 2 };
  if (existing) {
    try {
      idx = JSON.parse(existing) as typeof idx;
    } catch (e) {
      throw new CacheFormatError('the layout index.json is not valid JSON', e);
    }
  }
  const kept = (idx.manifests ?? []).filter(
    (d) => d.annotations?.[REF_NAME_ANNOTATION] !== tag && d.digest !== desc.digest,
  );
  return JSON.stringify({
    schemaVersion: 2,
    mediaType: OCI_INDEX_MEDIA_TYPE,
    manifests: [...kept, { ...desc, annotations: { [REF_NAME_ANNOTATION]: tag } }],
  });
}

/**
 * The descriptor of the cache in a layout's `index.json`: the one with `digest` if given, else
 * the one tagged `tag` (BuildKit's local importer: `digest=` wins over `tag=`).
 */
export function findInLayoutIndex(
  indexJson: string,
  o: { tag?: string; digest?: string },
): Descriptor {
  let idx: { manifests?: Descriptor[] };
  try {
    idx = JSON.parse(indexJson) as typeof idx;
  } catch (e) {
    throw new CacheFormatError('the layout index.json is not valid JSON', e);
  }
  const tag = o.tag || 'latest';
  const d = (idx.manifests ?? []).find((m) =>
    o.digest ? m.digest === o.digest : m.annotations?.[REF_NAME_ANNOTATION] === tag,
  );
  if (!d)
    throw new CacheFormatError(
      `the cache layout has no ${o.digest ? `descriptor ${o.digest}` : `tag ${tag}`}`,
    );
  return d;
}
