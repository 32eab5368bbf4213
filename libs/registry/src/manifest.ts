import type { Platform } from '@kiln/protocol';
import { isDigest } from '@kiln/store';
import type { Digest } from '@kiln/store';
import { ManifestInvalidError } from './errors.js';

/** Media types of the OCI image-spec and Docker's image manifest v2 schema 2. */
export const MediaType = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  ociLayerNondistributable: 'application/vnd.oci.image.layer.nondistributable.v1.tar',
  ociLayerNondistributableGzip: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  dockerForeignLayerGzip: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  /** An in-toto statement: the layers of an attestation manifest. */
  inToto: 'application/vnd.in-toto+json',
} as const;

/** What a manifest GET asks for, in preference order (as containerd's resolver does). */
export const MANIFEST_ACCEPT = [
  MediaType.dockerManifest,
  MediaType.dockerManifestList,
  MediaType.ociManifest,
  MediaType.ociIndex,
  '*/*',
].join(', ');

export function isIndexMediaType(mt: string): boolean {
  return mt === MediaType.ociIndex || mt === MediaType.dockerManifestList;
}

export function isManifestMediaType(mt: string): boolean {
  return mt === MediaType.ociManifest || mt === MediaType.dockerManifest;
}

const LAYER_TYPES: ReadonlySet<string> = new Set([
  MediaType.ociLayer,
  MediaType.ociLayerGzip,
  MediaType.ociLayerZstd,
  MediaType.ociLayerNondistributable,
  MediaType.ociLayerNondistributableGzip,
  MediaType.dockerLayer,
  MediaType.dockerLayerGzip,
  MediaType.dockerForeignLayerGzip,
]);

export function isLayerMediaType(mt: string): boolean {
  return LAYER_TYPES.has(mt);
}

/** An OCI content descriptor. */
export interface Descriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  urls?: string[];
  annotations?: Record<string, string>;
  platform?: Platform;
}

export interface ImageManifest {
  schemaVersion: 2;
  mediaType: string;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
}

export interface ImageIndex {
  schemaVersion: 2;
  mediaType: string;
  manifests: Descriptor[];
  annotations?: Record<string, string>;
}

/** The OCI image configuration (the parts a builder reads; other fields are kept as they come). */
export interface ImageConfig {
  architecture: string;
  os: string;
  variant?: string;
  'os.version'?: string;
  'os.features'?: string[];
  created?: string;
  author?: string;
  config?: {
    User?: string;
    ExposedPorts?: Record<string, object>;
    Env?: string[];
    Entrypoint?: string[] | null;
    Cmd?: string[] | null;
    Volumes?: Record<string, object>;
    WorkingDir?: string;
    Labels?: Record<string, string>;
    StopSignal?: string;
    Healthcheck?: Record<string, unknown>;
    Shell?: string[];
    OnBuild?: string[] | null;
    ArgsEscaped?: boolean;
  };
  rootfs: { type: string; diff_ids: Digest[] };
  history?: {
    created?: string;
    created_by?: string;
    author?: string;
    comment?: string;
    empty_layer?: boolean;
  }[];
  [key: string]: unknown;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function parseJson(bytes: Buffer, what: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new ManifestInvalidError(`${what}: not valid JSON`, { cause: err });
  }
  if (!isObject(v)) throw new ManifestInvalidError(`${what}: not a JSON object`);
  return v;
}

function parsePlatformField(v: unknown, what: string): Platform | undefined {
  if (v === undefined) return undefined;
  if (!isObject(v) || typeof v.os !== 'string' || typeof v.architecture !== 'string') {
    throw new ManifestInvalidError(`${what}: platform needs os and architecture`);
  }
  const p: { -readonly [K in keyof Platform]: Platform[K] } = {
    os: v.os,
    architecture: v.architecture,
  };
  if (typeof v.variant === 'string' && v.variant !== '') p.variant = v.variant;
  if (typeof v['os.version'] === 'string' && v['os.version'] !== '') p.osVersion = v['os.version'];
  if (Array.isArray(v['os.features']))
    p.osFeatures = v['os.features'].filter((f): f is string => typeof f === 'string');
  return p;
}

/** Validates one descriptor; `what` names it in errors. */
export function parseDescriptor(v: unknown, what: string): Descriptor {
  if (!isObject(v)) throw new ManifestInvalidError(`${what}: descriptor is not an object`);
  const { mediaType, digest, size } = v;
  if (typeof mediaType !== 'string' || mediaType === '') {
    throw new ManifestInvalidError(`${what}: descriptor without mediaType`);
  }
  if (typeof digest !== 'string' || !isDigest(digest)) {
    throw new ManifestInvalidError(
      `${what}: unsupported or invalid digest ${JSON.stringify(digest)}`,
    );
  }
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
    throw new ManifestInvalidError(`${what}: invalid size ${JSON.stringify(size)}`);
  }
  const d: Descriptor = { mediaType, digest, size };
  if (Array.isArray(v.urls)) d.urls = v.urls.filter((u): u is string => typeof u === 'string');
  if (isObject(v.annotations)) d.annotations = v.annotations as Record<string, string>;
  const platform = parsePlatformField(v.platform, what);
  if (platform !== undefined) d.platform = platform;
  return d;
}

/** A parsed manifest document: an index (multi-platform) or an image manifest. */
export type ManifestDocument =
  { kind: 'index'; index: ImageIndex } | { kind: 'manifest'; manifest: ImageManifest };

/**
 * Parses manifest bytes. The media type comes from the document's own `mediaType` when present,
 * else from the response's Content-Type (`headerType`); a disagreement between the two is invalid,
 * as in containerd. Docker schema 1 is refused.
 */
export function parseManifest(
  bytes: Buffer,
  headerType: string | undefined,
  what: string,
): ManifestDocument {
  const doc = parseJson(bytes, what);
  if (doc.schemaVersion !== 2) {
    throw new ManifestInvalidError(
      `${what}: unsupported schemaVersion ${JSON.stringify(doc.schemaVersion)} (Docker schema 1 is not supported)`,
    );
  }
  const docType = typeof doc.mediaType === 'string' ? doc.mediaType : undefined;
  const header = headerType?.split(';')[0]?.trim();
  let mediaType = docType;
  if (
    mediaType === undefined &&
    header !== undefined &&
    (isIndexMediaType(header) || isManifestMediaType(header))
  ) {
    mediaType = header;
  }
  if (mediaType === undefined) {
    // An OCI document without mediaType: tell index from manifest by shape.
    if (Array.isArray(doc.manifests)) mediaType = MediaType.ociIndex;
    else if (isObject(doc.config)) mediaType = MediaType.ociManifest;
    else throw new ManifestInvalidError(`${what}: cannot tell the document's media type`);
  }
  if (isIndexMediaType(mediaType)) {
    if (!Array.isArray(doc.manifests))
      throw new ManifestInvalidError(`${what}: index without manifests`);
    const manifests = doc.manifests.map((m, i) => parseDescriptor(m, `${what} manifests[${i}]`));
    const index: ImageIndex = { schemaVersion: 2, mediaType, manifests };
    if (isObject(doc.annotations)) index.annotations = doc.annotations as Record<string, string>;
    return { kind: 'index', index };
  }
  if (isManifestMediaType(mediaType)) {
    if (!Array.isArray(doc.layers))
      throw new ManifestInvalidError(`${what}: manifest without layers`);
    const config = parseDescriptor(doc.config, `${what} config`);
    const layers = doc.layers.map((l, i) => parseDescriptor(l, `${what} layers[${i}]`));
    // An attestation manifest (BuildKit's provenance and SBOM) holds in-toto statements, never
    // filesystem layers: accepted whole, never mixed with layers.
    const attestation = layers.length > 0 && layers.every((l) => l.mediaType === MediaType.inToto);
    for (const [i, l] of layers.entries()) {
      if (!attestation && !isLayerMediaType(l.mediaType)) {
        throw new ManifestInvalidError(
          `${what}: layers[${i}] has unsupported media type ${l.mediaType}`,
        );
      }
    }
    const manifest: ImageManifest = { schemaVersion: 2, mediaType, config, layers };
    if (isObject(doc.annotations)) manifest.annotations = doc.annotations as Record<string, string>;
    return { kind: 'manifest', manifest };
  }
  throw new ManifestInvalidError(`${what}: unsupported media type ${mediaType}`);
}

/** Parses and checks an image config against its manifest's layer count. */
export function parseImageConfig(bytes: Buffer, what: string, layerCount?: number): ImageConfig {
  const doc = parseJson(bytes, what);
  if (typeof doc.architecture !== 'string' || typeof doc.os !== 'string') {
    throw new ManifestInvalidError(`${what}: image config needs os and architecture`);
  }
  const rootfs = doc.rootfs;
  if (!isObject(rootfs) || !Array.isArray(rootfs.diff_ids)) {
    throw new ManifestInvalidError(`${what}: image config without rootfs.diff_ids`);
  }
  for (const d of rootfs.diff_ids) {
    if (typeof d !== 'string' || !isDigest(d)) {
      throw new ManifestInvalidError(`${what}: invalid diff_id ${JSON.stringify(d)}`);
    }
  }
  if (layerCount !== undefined && rootfs.diff_ids.length !== layerCount) {
    throw new ManifestInvalidError(
      `${what}: ${rootfs.diff_ids.length} diff_ids for ${layerCount} layers in the manifest`,
    );
  }
  return doc as ImageConfig;
}
