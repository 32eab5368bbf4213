/**
 * The `image` exporter with `push=true` (buildx's `type=registry`): the built image (or an OCI
 * index over several platforms' images) pushed to a registry under each of its names. Blobs first
 * (each skipped when the repository has it, or mounted from another repository of the same
 * registry), then the platform manifests by digest, then the top manifest under each tag: a name
 * never points at anything incomplete.
 */
import { KilnError } from '@kiln/protocol';
import type { BlobStore, Digest } from '@kiln/store';
import { toReference } from '@kiln/registry';
import type { RegistryClient } from '@kiln/registry';
import { imageIndex, needsIndex } from './export.js';
import type { TarballImage } from './export.js';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';

export class PushError extends KilnError {
  constructor(message: string, details: Record<string, string> = {}) {
    super('EXPORT_PUSH_INVALID', message, { details });
  }
}

export interface PushResult {
  /** Digest of what the names point at (the manifest, or the index of several). */
  digest: string;
  mediaType: string;
  /** The names pushed, normalized (`registry/path:tag`). */
  names: string[];
}

export async function pushImages(
  client: RegistryClient,
  store: BlobStore,
  images: TarballImage[],
  names: string[],
  indexAnnotations: Record<string, string> = {},
): Promise<PushResult> {
  if (images.length === 0) throw new PushError('nothing to push');
  if (names.length === 0)
    throw new PushError('pushing an image needs a name (name=REGISTRY/REPO:TAG)');
  const refs = names.map((n) => {
    try {
      return toReference(n);
    } catch (cause) {
      throw new PushError(`invalid image name ${JSON.stringify(n)}: ${String(cause)}`, {
        name: n,
      });
    }
  });
  let top: { bytes: Buffer; digest: string; mediaType: string } | undefined;
  if (needsIndex(images)) {
    const bytes = imageIndex(images, indexAnnotations);
    top = { bytes, digest: '', mediaType: OCI_INDEX };
  }
  const out: string[] = [];
  let digest = '';
  for (const ref of refs) {
    const repo = { domain: ref.domain, path: ref.path };
    for (const t of images) {
      for (const l of t.image.layers) {
        await client.pushBlob(repo, { digest: l.digest as Digest, size: l.size }, () =>
          store.get(l.digest as Digest),
        );
      }
      await client.pushBlob(
        repo,
        { digest: t.image.configDigest as Digest, size: t.image.config.length },
        t.image.config,
      );
      if (top)
        await client.pushManifest(repo, t.image.manifestDigest, t.image.manifest, OCI_MANIFEST);
    }
    for (const { attestation: a } of images) {
      if (!a) continue;
      for (const l of a.layers)
        await client.pushBlob(repo, { digest: l.digest as Digest, size: l.data.length }, l.data);
      await client.pushBlob(
        repo,
        { digest: a.configDigest as Digest, size: a.config.length },
        a.config,
      );
      await client.pushManifest(repo, a.manifestDigest, a.manifest, OCI_MANIFEST);
    }
    const tag = ref.tag ?? 'latest';
    digest = top
      ? await client.pushManifest(repo, tag, top.bytes, top.mediaType)
      : await client.pushManifest(repo, tag, images[0]!.image.manifest, OCI_MANIFEST);
    out.push(`${ref.domain}/${ref.path}:${tag}`);
  }
  return { digest, mediaType: top ? OCI_INDEX : OCI_MANIFEST, names: out };
}
