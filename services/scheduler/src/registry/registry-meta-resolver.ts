/**
 * A registry-backed `MetaResolver` for the Dockerfile frontend: resolves `name:tag` to its
 * manifest digest (through an image index, the manifest of the requested platform) and fetches
 * the image config. Anonymous pulls only (bearer tokens from the registry's realm, as Docker Hub
 * hands them out); plain HTTP for loopback hosts and configured insecure registries.
 *
 * The worker has a full registry client (auth, mirrors, retries); this one is deliberately small
 * because the scheduler only reads manifests and configs. Both follow the distribution spec.
 */
import { createHash } from 'node:crypto';
import type { ImageMetadata, MetaResolver } from '@kiln/dockerfile';
import { parseImageReference } from '@kiln/llb';
import type { Platform } from '@kiln/llb';
import { KilnError } from '@kiln/protocol';

export interface RegistryMetaResolverOptions {
  /** Registries spoken to over plain HTTP (`host:port`); loopback hosts always are. */
  insecureRegistries?: readonly string[];
  /** Per request. Default 30 s. */
  timeoutMs?: number;
}

const MANIFEST_TYPES = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

interface Descriptor {
  mediaType?: string;
  digest: string;
  platform?: { os?: string; architecture?: string; variant?: string };
}

interface Manifest {
  mediaType?: string;
  manifests?: Descriptor[];
  config?: Descriptor;
}

export class ImageResolveError extends KilnError {
  constructor(ref: string, message: string, cause?: unknown) {
    super('IMAGE_RESOLVE_FAILED', `${ref}: ${message}`, { cause, details: { ref } });
  }
}

function isLoopback(domain: string): boolean {
  const host = domain.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}

export function registryMetaResolver(o: RegistryMetaResolverOptions = {}): MetaResolver {
  const insecure = new Set((o.insecureRegistries ?? []).map((h) => h.toLowerCase()));
  const timeoutMs = o.timeoutMs ?? 30_000;
  const tokens = new Map<string, string>();

  async function get(ref: string, url: string, accept: string, scope: string): Promise<Response> {
    const headers: Record<string, string> = { accept };
    const token = tokens.get(scope);
    if (token) headers.authorization = `Bearer ${token}`;
    let res = await fetch(url, { headers, signal: AbortSignal.timeout(timeoutMs) });
    if (res.status === 401) {
      const challenge = res.headers.get('www-authenticate') ?? '';
      const m = /^Bearer\s+(.*)$/i.exec(challenge);
      if (!m) throw new ImageResolveError(ref, `unauthorized (${challenge || 'no challenge'})`);
      const params = Object.fromEntries(
        [...(m[1] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1] ?? '', x[2] ?? '']),
      );
      const t = new URL(params.realm ?? '');
      if (params.service) t.searchParams.set('service', params.service);
      t.searchParams.set('scope', params.scope ?? scope);
      const tr = await fetch(t, { signal: AbortSignal.timeout(timeoutMs) });
      if (!tr.ok) throw new ImageResolveError(ref, `token request failed: ${tr.status}`);
      const body = (await tr.json()) as { token?: string; access_token?: string };
      tokens.set(scope, body.token ?? body.access_token ?? '');
      headers.authorization = `Bearer ${tokens.get(scope) ?? ''}`;
      res = await fetch(url, { headers, signal: AbortSignal.timeout(timeoutMs) });
    }
    if (!res.ok) throw new ImageResolveError(ref, `${url}: HTTP ${res.status}`);
    return res;
  }

  return async (ref: string, platform: Platform): Promise<ImageMetadata> => {
    let r;
    try {
      r = parseImageReference(ref);
    } catch (cause) {
      throw new ImageResolveError(ref, 'invalid reference', cause);
    }
    const domain = r.domain === 'docker.io' ? 'registry-1.docker.io' : r.domain;
    const scheme = isLoopback(domain) || insecure.has(r.domain.toLowerCase()) ? 'http' : 'https';
    const base = `${scheme}://${domain}/v2/${r.path}`;
    const scope = `repository:${r.path}:pull`;
    const fetchManifest = async (reference: string) => {
      const res = await get(ref, `${base}/manifests/${reference}`, MANIFEST_TYPES, scope);
      const bytes = Buffer.from(await res.arrayBuffer());
      const digest =
        res.headers.get('docker-content-digest') ??
        `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
      return { digest, manifest: JSON.parse(bytes.toString('utf8')) as Manifest };
    };
    let { digest, manifest } = await fetchManifest(r.digest ?? r.tag ?? 'latest');
    const pinned = digest;
    if (manifest.manifests) {
      const want = (d: Descriptor): boolean =>
        d.platform?.os === platform.os &&
        d.platform.architecture === platform.architecture &&
        (!platform.variant || !d.platform.variant || d.platform.variant === platform.variant);
      const chosen = manifest.manifests.find(want);
      if (!chosen)
        throw new ImageResolveError(
          ref,
          `no manifest for ${platform.os}/${platform.architecture}${platform.variant ? `/${platform.variant}` : ''}`,
        );
      ({ digest, manifest } = await fetchManifest(chosen.digest));
    }
    if (!manifest.config?.digest) throw new ImageResolveError(ref, 'manifest has no config');
    const cfg = await get(ref, `${base}/blobs/${manifest.config.digest}`, '*/*', scope);
    const config = Buffer.from(await cfg.arrayBuffer());
    const actual = `sha256:${createHash('sha256').update(config).digest('hex')}`;
    if (actual !== manifest.config.digest)
      throw new ImageResolveError(ref, `config digest mismatch: ${actual}`);
    // Pinned to what the tag named (the index when there is one), as BuildKit pins FROM.
    return { ref, digest: pinned, config };
  };
}
