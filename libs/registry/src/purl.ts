/** Package URLs of images, as BuildKit's `util/purl` writes them in attestations. */
import { toReference } from './client.js';

/** A package URL segment as packageurl-go writes it (`url.PathEscape`, `:` escaped too). */
function purlSegment(s: string): string {
  return encodeURIComponent(s).replace(/%40/g, '@').replace(/%2B/g, '+');
}

/**
 * The package URL of an image name for a platform, as BuildKit's `purl.RefToPURL`: the familiar
 * name split into namespace and name, the tag as version (`latest` when none), the platform as a
 * qualifier.
 */
export function imagePurl(
  name: string,
  platform?: { os: string; architecture: string; variant?: string },
): string {
  const ref = toReference(name);
  let familiar = `${ref.domain}/${ref.path}`;
  if (ref.domain === 'docker.io')
    familiar = ref.path.startsWith('library/') ? ref.path.slice('library/'.length) : ref.path;
  const parts = familiar.split('/');
  const base = parts.pop()!;
  const ns = parts.map(purlSegment).join('/');
  const qualifiers: string[] = [];
  if (ref.digest) qualifiers.push(`digest=${encodeURIComponent(ref.digest)}`);
  const version = ref.tag ?? (ref.digest ? '' : 'latest');
  if (platform) {
    const p = [platform.os, platform.architecture, platform.variant].filter(Boolean).join('/');
    qualifiers.push(`platform=${encodeURIComponent(p)}`);
  }
  return (
    `pkg:docker/${ns ? `${ns}/` : ''}${purlSegment(base)}` +
    (version ? `@${purlSegment(version)}` : '') +
    (qualifiers.length ? `?${qualifiers.join('&')}` : '')
  );
}
