/** Copying a fixture image between registries with the one registry client. */
import type { ImageReference } from '@kiln/llb';
import type { RegistryClient, Repository } from '@kiln/registry';

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
