import { formatPlatform, platformMatches } from '@kiln/protocol';
import type { Platform } from '@kiln/protocol';
import type { Descriptor } from './manifest.js';

/** Attestation manifests (BuildKit provenance/SBOM) are listed as `unknown/unknown` and are never images. */
function isAttestation(d: Descriptor): boolean {
  return (
    d.annotations?.['vnd.docker.reference.type'] === 'attestation-manifest' ||
    d.platform?.os === 'unknown'
  );
}

/**
 * Picks the manifest for `want` from an index's entries: the first exact match, in index order
 * (containerd sorts by preference, and with exact matching the first entry wins). Returns the
 * platforms available when nothing matches, for the error message.
 */
export function selectPlatform(
  manifests: readonly Descriptor[],
  want: Platform,
): { match: Descriptor } | { match: undefined; available: string[] } {
  for (const m of manifests) {
    if (m.platform !== undefined && !isAttestation(m) && platformMatches(want, m.platform))
      return { match: m };
  }
  const available = manifests
    .filter((m) => m.platform !== undefined && !isAttestation(m))
    .map((m) => formatPlatform(m.platform!));
  return { match: undefined, available: [...new Set(available)] };
}
