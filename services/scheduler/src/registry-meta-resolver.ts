/**
 * A registry-backed `MetaResolver` for the Dockerfile frontend (BuildKit's ResolveImageConfig):
 * resolves `name:tag` to its digest (the index for a multi-platform image, as BuildKit pins FROM)
 * and returns the config of the requested platform's image, through `@kiln/registry`, the client
 * the workers pull with. So a private base image resolves with the same credentials: the build's
 * own (its client's, through the session: `MetaResolveOptions.credentials`) first, then the
 * options' provider, then the scheduler's docker config (`auths`, `credsStore`, `credHelpers`)
 * unless `dockerConfig` is false (the farm's default: builds never borrow the scheduler's
 * identity). Plain HTTP for loopback hosts and configured insecure registries. A build's
 * credentials get a registry client of their own (its tokens are that build's), kept as long as
 * the provider lives.
 *
 * Every call asks the registry what the reference names now (one HEAD, as BuildKit resolves a tag
 * on every build, with the caller's credentials: a caller that may not pull the image learns
 * nothing). What a digest names never changes, so the platform's manifest and config, fetched
 * and verified once, are kept in memory by (digest, platform) and not fetched again: a cached
 * build's FROM costs one round trip instead of four.
 */
import type { ImageMetadata, MetaResolver } from '@kiln/dockerfile';
import type { Platform } from '@kiln/protocol';
import { RegistryClient, chainCredentials, resolvePlatformImage } from '@kiln/registry';
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

/** Per call: the credentials of the build that asks (its client's, through its session). */
export interface MetaResolveOptions {
  credentials?: CredentialsProvider;
}

/** A `MetaResolver` that takes the asking build's credentials. */
export type SessionMetaResolver = (
  ref: string,
  platform: Platform,
  o?: MetaResolveOptions,
) => Promise<ImageMetadata>;

const platformKey = (p: Platform): string =>
  JSON.stringify([p.os, p.architecture, p.variant ?? '', p.osVersion ?? '', p.osFeatures ?? []]);

export function registryMetaResolver(
  o: RegistryMetaResolverOptions = {},
): SessionMetaResolver & MetaResolver {
  const clientFor = (first?: CredentialsProvider): RegistryClient => {
    const chained = first && o.credentials ? chainCredentials(first, o.credentials) : undefined;
    const credentials = chained ?? first ?? o.credentials;
    return new RegistryClient({
      ...(o.insecureRegistries ? { insecureRegistries: o.insecureRegistries } : {}),
      ...(credentials ? { credentials } : {}),
      ...(o.dockerConfig !== undefined ? { dockerConfig: o.dockerConfig } : {}),
    });
  };
  const shared = clientFor();
  const perBuild = new WeakMap<CredentialsProvider, RegistryClient>();
  const max = o.maxCachedConfigs ?? DEFAULT_MAX_CACHED_CONFIGS;
  // `${digest} ${platform}` -> the config of that platform's image; a Map iterates in insertion
  // order, so re-inserting on a hit keeps the least recently used first.
  const configs = new Map<string, Buffer>();
  return async (ref: string, platform: Platform, ro?: MetaResolveOptions) => {
    let client = shared;
    if (ro?.credentials) {
      client = perBuild.get(ro.credentials) ?? clientFor(ro.credentials);
      perBuild.set(ro.credentials, client);
    }
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
