import { InvalidDefinitionError } from './errors.js';

/**
 * Docker image reference normalization (distribution/reference's ParseNormalizedNamed +
 * TagNameOnly): `busybox` becomes `docker.io/library/busybox:latest`.
 */
export interface ImageReference {
  readonly domain: string;
  readonly path: string;
  readonly tag?: string;
  readonly digest?: string;
}

const DEFAULT_DOMAIN = 'docker.io';
const pathComponent = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/;
const tagRe = /^[\w][\w.-]{0,127}$/;
const digestRe = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;
const domainRe =
  /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$/;

function invalid(ref: string, why: string): never {
  throw new InvalidDefinitionError('LLB_BUILD', `invalid image reference "${ref}": ${why}`);
}

export function parseImageReference(ref: string): ImageReference {
  if (ref === '' || ref.length > 255 + 128 + 72) invalid(ref, 'empty or too long');
  let rest = ref;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!digestRe.test(digest)) invalid(ref, 'bad digest');
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!tagRe.test(tag)) invalid(ref, 'bad tag');
  }
  let domain = DEFAULT_DOMAIN;
  let path = rest;
  const slash = rest.indexOf('/');
  const first = slash >= 0 ? rest.slice(0, slash) : '';
  if (
    slash >= 0 &&
    (first.includes('.') ||
      first.includes(':') ||
      first === 'localhost' ||
      first !== first.toLowerCase())
  ) {
    domain = first;
    path = rest.slice(slash + 1);
    if (!domainRe.test(domain)) invalid(ref, 'bad registry host');
  }
  if (domain === 'index.docker.io') domain = DEFAULT_DOMAIN;
  if (domain === DEFAULT_DOMAIN && !path.includes('/')) path = `library/${path}`;
  if (path === '' || path.split('/').some((c) => !pathComponent.test(c))) {
    invalid(ref, 'repository name must be lowercase alphanumerics separated by . _ __ or -');
  }
  const out: { domain: string; path: string; tag?: string; digest?: string } = { domain, path };
  if (tag !== undefined) out.tag = tag;
  if (digest !== undefined) out.digest = digest;
  return out;
}

export function formatImageReference(r: ImageReference): string {
  return `${r.domain}/${r.path}${r.tag !== undefined ? `:${r.tag}` : ''}${r.digest !== undefined ? `@${r.digest}` : ''}`;
}

/** Normalizes a reference and adds `:latest` when it has neither tag nor digest. */
export function normalizeImageReference(ref: string): string {
  const r = parseImageReference(ref);
  return formatImageReference(
    r.tag === undefined && r.digest === undefined ? { ...r, tag: 'latest' } : r,
  );
}
