/**
 * A registry-backed `MetaResolver` for the Dockerfile frontend (BuildKit's ResolveImageConfig):
 * resolves `name:tag` to its digest (the index for a multi-platform image, as BuildKit pins FROM)
 * and returns the config of the requested platform's image, through `@kiln/registry`, the client
 * the workers pull with. So a private base image resolves with the same credentials: the
 * caller's provider first, then the scheduler's docker config (`auths`, `credsStore`,
 * `credHelpers`). Plain HTTP for loopback hosts and configured insecure registries.
 *
 * Every call asks the registry what the reference names now (one HEAD, as BuildKit resolves a tag
 * on every build, with the caller's credentials: a caller that may not pull the image learns
 * nothing). What a digest names never changes, so the platform's manifest and config, fetched
 * and verified once, are kept in memory by (digest, platform) and not fetched again: a cached
 * build's FROM costs one round trip instead of four.
 */
import type { ImageMetadata, MetaResolver } from '@kiln/dockerfile';
import type { Platform } from '@kiln/protocol';
import { RegistryClient, resolvePlatformImage } from '@kiln/registry';
import type { CredentialsProvider } from '@kiln/registry';

export interface RegistryMetaResolverOptions {
  /** Registries spoken to over plain HTTP (`host:port`); loopback hosts always are. */
  insecureRegistries?: readonly string[];
  /** Credentials handed in by the caller, consulted before the docker config. */
  credentials?: CredentialsProvider;
  /** Docker CLI config path (default `~/.docker/config.json`); false: none. */
  dockerConfig?: string | false;
  /** Resolved (digest, platform) configs kept in memory, least recently used dropped; 0: none. */
  maxCachedConfigs?: number;
}

const DEFAULT_MAX_CACHED_CONFIGS = 256;

const platformKey = (p: Platform): string =>
  JSON.stringify([p.os, p.architecture, p.variant ?? '', p.osVersion ?? '', p.osFeatures ?? []]);

export function registryMetaResolver(o: RegistryMetaResolverOptions = {}): MetaResolver {
  const client = new RegistryClient({
    ...(o.insecureRegistries ? { insecureRegistries: o.insecureRegistries } : {}),
    ...(o.credentials ? { credentials: o.credentials } : {}),
    ...(o.dockerConfig !== undefined ? { dockerConfig: o.dockerConfig } : {}),
  });
  const max = o.maxCachedConfigs ?? DEFAULT_MAX_CACHED_CONFIGS;
  // `${digest} ${platform}` -> the config of that platform's image; a Map iterates in insertion
  // order, so re-inserting on a hit keeps the least recently used first.
  const configs = new Map<string, Buffer>();
  return async (ref: string, platform: Platform): Promise<ImageMetadata> => {
    const resolved = await client.resolve(ref);
    const digest = resolved.descriptor.digest;
    const key = `${digest} ${platformKey(platform)}`;
    let config = configs.get(key);
    if (config !== undefined) {
      configs.delete(key);
    } else {
      // Pinned to what the tag named a moment ago, so the entry is keyed by what was read.
      const img = await resolvePlatformImage(client, resolved.ref, platform);
      config = img.configBytes;
    }
    if (max > 0) {
      configs.set(key, config);
      while (configs.size > max) configs.delete(configs.keys().next().value!);
    }
    return { ref, digest, config };
  };
}
