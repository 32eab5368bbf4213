// Fixture images: build the busybox OCI layout (scripts/fixtures/build-busybox.mjs) and push OCI
// layouts to a registry with the distribution API (blobs, then manifests bottom-up, then the tag).

import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT, SETUP_HINT } from '@kiln/testing';

const execFileAsync = promisify(execFile);

export const FIXTURE_BUILDER = join(REPO_ROOT, 'scripts/fixtures/build-busybox.mjs');
export const BUSYBOX_LAYOUT_DIR = join(REPO_ROOT, 'fixtures/out/busybox-oci');

export const MEDIA_TYPES = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
} as const;

/** Builds (or confirms) the busybox OCI layout in `outDir`; returns the index digest. */
export async function buildBusyboxFixture(outDir: string = BUSYBOX_LAYOUT_DIR): Promise<string> {
  try {
    const { stdout } = await execFileAsync(process.execPath, [FIXTURE_BUILDER, '--out', outDir], {
      cwd: REPO_ROOT,
      maxBuffer: 1 << 20,
    });
    const digest = stdout.trim().split('\n').pop() ?? '';
    if (!/^sha256:[0-9a-f]{64}$/.test(digest))
      throw new Error(`unexpected builder output: ${stdout}`);
    return digest;
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr ?? '';
    throw new Error(
      `building the busybox fixture failed (${SETUP_HINT}): ${stderr || String(err)}`,
    );
  }
}

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

interface ManifestLike {
  mediaType?: string;
  manifests?: Descriptor[];
  config?: Descriptor;
  layers?: Descriptor[];
}

export const sha256Digest = (buf: Uint8Array): string =>
  `sha256:${createHash('sha256').update(buf).digest('hex')}`;

async function readBlob(layoutDir: string, digest: string): Promise<Buffer> {
  const [alg, hex] = digest.split(':');
  if (!alg || !hex) throw new Error(`bad digest ${digest}`);
  const buf = await readFile(join(layoutDir, 'blobs', alg, hex));
  if (sha256Digest(buf) !== digest)
    throw new Error(`blob ${digest} in ${layoutDir} does not match its digest`);
  return buf;
}

async function check(res: Response, what: string, ok: number[]): Promise<void> {
  if (!ok.includes(res.status)) {
    const body = await res.text().catch(() => '');
    throw new Error(`${what}: HTTP ${res.status} ${body.slice(0, 500)}`);
  }
}

async function pushBlob(base: string, repo: string, digest: string, data: Buffer): Promise<void> {
  const head = await fetch(`${base}/v2/${repo}/blobs/${digest}`, { method: 'HEAD' });
  if (head.status === 200) return;
  const start = await fetch(`${base}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  await check(start, `start upload of ${digest}`, [202]);
  await start.arrayBuffer();
  const location = start.headers.get('location');
  if (!location) throw new Error(`start upload of ${digest}: no Location`);
  const url = new URL(location, base);
  url.searchParams.set('digest', digest);
  const put = await fetch(url, {
    method: 'PUT',
    headers: { 'content-type': 'application/octet-stream', 'content-length': String(data.length) },
    body: data,
  });
  await check(put, `upload of ${digest}`, [201]);
  await put.arrayBuffer();
}

async function pushManifest(
  base: string,
  repo: string,
  ref: string,
  mediaType: string,
  data: Buffer,
): Promise<string> {
  const res = await fetch(`${base}/v2/${repo}/manifests/${ref}`, {
    method: 'PUT',
    headers: { 'content-type': mediaType },
    body: data,
  });
  await check(res, `put manifest ${repo}:${ref}`, [201]);
  await res.arrayBuffer();
  return res.headers.get('docker-content-digest') ?? sha256Digest(data);
}

/**
 * Pushes the image tagged `srcTag` (annotation org.opencontainers.image.ref.name) of an OCI layout
 * — an index with all its platforms, or a single manifest — to `registry` (host:port, plain http)
 * as `repo:tag`. Digests are preserved. Returns the pushed top-level digest.
 */
export async function pushOciLayout(
  layoutDir: string,
  registry: string,
  repo: string,
  tag = 'latest',
  srcTag = 'latest',
): Promise<string> {
  const base = `http://${registry}`;
  const layoutIndex = JSON.parse(
    await readFile(join(layoutDir, 'index.json'), 'utf8'),
  ) as ManifestLike;
  const top = layoutIndex.manifests?.find(
    (m) => m.annotations?.['org.opencontainers.image.ref.name'] === srcTag,
  );
  if (!top) throw new Error(`${layoutDir}: no image tagged ${srcTag}`);

  const pushTree = async (desc: Descriptor, ref: string): Promise<void> => {
    const data = await readBlob(layoutDir, desc.digest);
    const m = JSON.parse(data.toString('utf8')) as ManifestLike;
    if (m.manifests) {
      for (const child of m.manifests) await pushTree(child, child.digest);
    } else {
      for (const b of [...(m.config ? [m.config] : []), ...(m.layers ?? [])]) {
        await pushBlob(base, repo, b.digest, await readBlob(layoutDir, b.digest));
      }
    }
    const pushed = await pushManifest(base, repo, ref, desc.mediaType, data);
    if (pushed !== desc.digest)
      throw new Error(`registry stored ${repo}:${ref} as ${pushed}, expected ${desc.digest}`);
  };
  await pushTree(top, tag);
  return top.digest;
}

/** Builds the busybox fixture if needed and pushes it (all platforms) as `busybox:latest`. */
export async function pushFixtures(registry: string): Promise<{ image: string; digest: string }> {
  await buildBusyboxFixture();
  const digest = await pushOciLayout(BUSYBOX_LAYOUT_DIR, registry, 'busybox', 'latest');
  return { image: `${registry}/busybox:latest`, digest };
}
