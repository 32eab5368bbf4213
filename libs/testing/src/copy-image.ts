/** Copying a fixture image between registries with the one registry client. */
import { join } from 'node:path';
import { parseImageReference } from '@kiln/llb';
import type { ImageReference } from '@kiln/llb';
import { RegistryClient } from '@kiln/registry';
import type { Repository } from '@kiln/registry';
import { startAuthRegistry } from './auth-registry.js';
import type { RegistryHandle } from './registry.js';
import { waitFor } from './util.js';

/**
 * Copies one platform's manifest (config and layers) of the image `src` names to `dest:tag`,
 * reading with `from` and pushing with `to`; returns the pushed manifest's digest.
 */
export async function copyPlatformManifest(
  from: RegistryClient,
  src: ImageReference,
  to: RegistryClient,
  dest: Repository,
  tag: string,
  architecture = 'amd64',
): Promise<string> {
  const { descriptor } = await from.resolve(src);
  const top = await from.fetchManifest(src, descriptor);
  if (top.document.kind !== 'index') throw new Error(`${src.path} is not an index`);
  const desc = top.document.index.manifests.find((m) => m.platform?.architecture === architecture);
  if (desc === undefined) throw new Error(`${src.path} has no ${architecture} manifest`);
  const m = await from.fetchManifest(src, desc);
  if (m.document.kind !== 'manifest') throw new Error('nested index');
  for (const b of [m.document.manifest.config, ...m.document.manifest.layers]) {
    await to.pushBlob(dest, b, () => from.fetchBlob(src, b));
  }
  return to.pushManifest(dest, tag, m.bytes, desc.mediaType);
}

export interface PrivateRegistry {
  registry: RegistryHandle;
  /** The provisioned user `docker`'s password. */
  password: string;
  /** `<addr>/<path>:latest`: the fixture's amd64 image, readable only with the password. */
  ref: string;
  manifestDigest: string;
}

/**
 * A docker-registry with htpasswd auth (its provisioned user `docker`) holding the amd64 image
 * of `fixture` (the harness's registry) as `<addr>/<path>:latest`.
 */
export async function startPrivateRegistry(
  dir: string,
  fixture: string,
  path = 'private/busybox',
): Promise<PrivateRegistry> {
  const registry = await startAuthRegistry({
    htpasswd: { realm: 'kiln-private', path: join(dir, 'htpasswd') },
  });
  const password = await waitFor(
    'the provisioned password in the registry log',
    () => /password=(\S+) user=docker/.exec(registry.process.output())?.[1],
  );
  const manifestDigest = await copyPlatformManifest(
    new RegistryClient({ dockerConfig: false }),
    parseImageReference(fixture),
    new RegistryClient({
      dockerConfig: false,
      credentials: () => ({ username: 'docker', password }),
    }),
    { domain: registry.addr, path },
    'latest',
  );
  return { registry, password, ref: `${registry.addr}/${path}:latest`, manifestDigest };
}
