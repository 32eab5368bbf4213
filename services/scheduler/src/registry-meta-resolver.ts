/**
 * A registry-backed `MetaResolver` for the Dockerfile frontend (BuildKit's ResolveImageConfig):
 * resolves `name:tag` to its digest (the index for a multi-platform image, as BuildKit pins FROM)
 * and returns the config of the requested platform's image, through `@kiln/registry`, the client
 * the workers pull with. So a private base image resolves with the same credentials: the
 * caller's provider first, then the scheduler's docker config (`auths`, `credsStore`,
 * `credHelpers`). Plain HTTP for loopback hosts and configured insecure registries.
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
}

export function registryMetaResolver(o: RegistryMetaResolverOptions = {}): MetaResolver {
  const client = new RegistryClient({
    ...(o.insecureRegistries ? { insecureRegistries: o.insecureRegistries } : {}),
    ...(o.credentials ? { credentials: o.credentials } : {}),
    ...(o.dockerConfig !== undefined ? { dockerConfig: o.dockerConfig } : {}),
  });
  return async (ref: string, platform: Platform): Promise<ImageMetadata> => {
    const img = await resolvePlatformImage(client, ref, platform);
    return { ref, digest: img.digest, config: img.configBytes };
  };
}
