import type { ImageReference } from '@kiln/llb';
import { formatPlatform, platformMatches } from '@kiln/protocol';
import type { Platform } from '@kiln/protocol';
import type { Digest } from '@kiln/store';
import { formatReference, toReference } from './client.js';
import type { RegistryClient } from './client.js';
import { ManifestInvalidError, PlatformNotFoundError } from './errors.js';
import { isManifestMediaType, parseImageConfig } from './manifest.js';
import type { Descriptor, ImageConfig, ImageManifest } from './manifest.js';
import { selectPlatform } from './platform-match.js';

/** Where documents of an image are kept locally (a blob store), if anywhere. */
export interface ImageDocumentCache {
  /** The bytes of a config already held, if any (verified by whoever stored them). */
  get?(desc: Descriptor): Promise<Buffer | undefined>;
  /** Receives the top-level document, the chosen manifest and a fetched config, verified. */
  put?(desc: Descriptor, bytes: Buffer): Promise<void>;
}

/** An image reference resolved for one platform: its manifest and config, no layers. */
export interface PlatformImage {
  /** The reference with the digest it resolved to (`host/repo:tag@sha256:...`). */
  name: string;
  /** Digest the reference resolved to: the index, or the manifest of a single-platform image. */
  digest: Digest;
  manifestDescriptor: Descriptor;
  manifest: ImageManifest;
  configBytes: Buffer;
  config: ImageConfig;
  /** The platform the image's config names. */
  platform: Platform;
}

/**
 * Resolves `identifier` for `platform` as containerd does: the index entry of the platform (or,
 * as candidates, the entries without a platform), then the config, which has the last word also
 * for a single-platform image. {@link PlatformNotFoundError} lists what is available. Used by the
 * worker's image source (with its blob store as `cache`) and the scheduler's frontend metadata
 * resolver.
 */
export async function resolvePlatformImage(
  client: RegistryClient,
  identifier: string | ImageReference,
  platform: Platform,
  cache: ImageDocumentCache = {},
): Promise<PlatformImage> {
  const ref = toReference(identifier);
  const resolved = await client.resolve(ref);
  const top = await client.fetchManifest(ref, resolved.descriptor);
  await cache.put?.(top.descriptor, top.bytes);
  const name = formatReference(resolved.ref);

  let candidates: Descriptor[];
  let available: string[] = [];
  if (top.document.kind === 'index') {
    const sel = selectPlatform(top.document.index.manifests, platform);
    // As in containerd, entries without a platform are candidates too, judged by their config.
    const unlabelled = top.document.index.manifests.filter(
      (m) => m.platform === undefined && isManifestMediaType(m.mediaType),
    );
    if (sel.match === undefined) available = sel.available;
    candidates = sel.match !== undefined ? [sel.match] : unlabelled;
    if (candidates.length === 0) {
      throw new PlatformNotFoundError(name, formatPlatform(platform), available);
    }
  } else {
    candidates = [resolved.descriptor];
  }

  for (const desc of candidates) {
    let manifest: ImageManifest;
    let fetched: Buffer | undefined;
    if (top.document.kind === 'manifest') {
      manifest = top.document.manifest;
    } else {
      const m = await client.fetchManifest(ref, desc);
      if (m.document.kind !== 'manifest') {
        throw new ManifestInvalidError(`${name}: nested index ${desc.digest} is not supported`);
      }
      manifest = m.document.manifest;
      fetched = m.bytes;
    }
    let configBytes = await cache.get?.(manifest.config);
    if (configBytes === undefined) {
      configBytes = await client.readBlob(ref, manifest.config);
      await cache.put?.(manifest.config, configBytes);
    }
    const config = parseImageConfig(configBytes, `${name} config`, manifest.layers.length);
    const imagePlatform: Platform = {
      os: config.os,
      architecture: config.architecture,
      ...(config.variant !== undefined && config.variant !== '' ? { variant: config.variant } : {}),
    };
    if (!platformMatches(platform, imagePlatform)) {
      available.push(formatPlatform(imagePlatform));
      continue;
    }
    if (fetched !== undefined) await cache.put?.(desc, fetched);
    return {
      name,
      digest: resolved.descriptor.digest,
      manifestDescriptor: desc,
      manifest,
      configBytes,
      config,
      platform: imagePlatform,
    };
  }
  throw new PlatformNotFoundError(name, formatPlatform(platform), [...new Set(available)]);
}
