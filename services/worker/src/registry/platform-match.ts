import { formatPlatform, normalizePlatform } from '@kiln/llb';
import type { Platform } from '@kiln/llb';
import type { Descriptor } from './manifest.js';

/**
 * containerd's `platforms.Normalize`, on top of llb's: also `amd64/v1` -> `amd64` (v1 is the
 * baseline), so that an index entry and a request that differ only in spelling compare equal.
 */
export function canonicalPlatform(p: Platform): Platform {
  const n = normalizePlatform(p);
  if (n.architecture === 'amd64' && n.variant === 'v1') {
    const { variant: _variant, ...rest } = n;
    return rest;
  }
  return n;
}

/** `os/arch[/variant]` after normalization. */
export function platformKey(p: Platform): string {
  return formatPlatform(canonicalPlatform(p));
}

/**
 * Exact platform match after normalization (os, architecture and variant; `arm64` = `arm64/v8`,
 * `arm` = `arm/v7`, `amd64` = `amd64/v1`). `os.version`/`os.features` are not compared: they
 * matter for Windows images only.
 */
export function platformMatches(want: Platform, have: Platform): boolean {
  return platformKey(want) === platformKey(have);
}

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
    .map((m) => platformKey(m.platform!));
  return { match: undefined, available: [...new Set(available)] };
}
