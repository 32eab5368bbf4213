import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import { parseImageReference } from '@kiln/llb';
import { DigestMismatchError, sha256Digest } from '@kiln/store';
import type { Digest } from '@kiln/store';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RegistryClient, formatReference } from './client.js';
import type { Repository } from './client.js';
import { ImageNotFoundError, ManifestInvalidError, RegistryUnavailableError } from './errors.js';
import { MediaType } from './manifest.js';
import type { Descriptor, ImageIndex, ImageManifest } from './manifest.js';
import { harnessEnv, startFaultProxy } from '@kiln/testing';
import type { FaultProxy } from '@kiln/testing';

const REGISTRY = harnessEnv('KILN_TEST_REGISTRY');
const FIXTURE = harnessEnv('KILN_TEST_FIXTURE_IMAGE');
const client = new RegistryClient({ dockerConfig: false, retryBaseDelayMs: 10 });

async function readAll(s: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

interface FixtureTree {
  index: Descriptor;
  indexDoc: ImageIndex;
  manifests: { desc: Descriptor; doc: ImageManifest; bytes: Buffer }[];
}

async function fixtureTree(): Promise<FixtureTree> {
  const ref = parseImageReference(FIXTURE);
  const { descriptor } = await client.resolve(ref);
  const top = await client.fetchManifest(ref, descriptor);
  if (top.document.kind !== 'index') throw new Error('fixture is not an index');
  const manifests = [];
  for (const d of top.document.index.manifests) {
    const m = await client.fetchManifest(ref, d);
    if (m.document.kind !== 'manifest') throw new Error('nested index');
    manifests.push({ desc: d, doc: m.document.manifest, bytes: m.bytes });
  }
  return { index: descriptor, indexDoc: top.document.index, manifests };
}

describe('RegistryClient against the real registry', () => {
  let tree: FixtureTree;
  beforeAll(async () => {
    tree = await fixtureTree();
  });

  it('resolves a tag to the OCI index and fetches it verified', async () => {
    const r = await client.resolve(`docker-image://${FIXTURE}`);
    expect(r.descriptor.mediaType).toBe(MediaType.ociIndex);
    expect(r.ref.digest).toBe(r.descriptor.digest);
    expect(r.ref.tag).toBe('latest');
    const m = await client.fetchManifest(r.ref, r.descriptor);
    expect(sha256Digest(m.bytes)).toBe(r.descriptor.digest);
    expect(m.bytes.length).toBe(r.descriptor.size);
    expect(tree.indexDoc.manifests.map((d) => d.platform?.architecture).sort()).toEqual([
      'amd64',
      'arm64',
    ]);
  });

  it('resolves a digest reference', async () => {
    const ref = parseImageReference(FIXTURE);
    const amd = tree.manifests.find((m) => m.desc.platform?.architecture === 'amd64')!;
    const r = await client.resolve(`${ref.domain}/${ref.path}@${amd.desc.digest}`);
    expect(r.descriptor).toEqual({
      mediaType: MediaType.ociManifest,
      digest: amd.desc.digest,
      size: amd.desc.size,
    });
  });

  it('reports a missing tag and a missing repository as ImageNotFoundError', async () => {
    await expect(client.resolve(`${REGISTRY}/busybox:no-such-tag`)).rejects.toBeInstanceOf(
      ImageNotFoundError,
    );
    await expect(client.resolve(`${REGISTRY}/no/such/repo:latest`)).rejects.toBeInstanceOf(
      ImageNotFoundError,
    );
    const repo = parseImageReference(FIXTURE);
    const missing: Digest = `sha256:${'0'.repeat(64)}`;
    await expect(client.fetchBlob(repo, { digest: missing, size: 1 })).rejects.toBeInstanceOf(
      ImageNotFoundError,
    );
  });

  it('streams a blob verified against its digest', async () => {
    const repo = parseImageReference(FIXTURE);
    const layer = tree.manifests[0]!.doc.layers[0]!;
    const bytes = await readAll(await client.fetchBlob(repo, layer));
    expect(sha256Digest(bytes)).toBe(layer.digest);
    expect(gunzipSync(bytes).length).toBeGreaterThan(1024);
  });
});

describe('RegistryClient through a fault-injecting proxy', () => {
  const proxies: FaultProxy[] = [];
  let tree: FixtureTree;
  beforeAll(async () => {
    tree = await fixtureTree();
  });
  afterAll(async () => {
    await Promise.all(proxies.map((p) => p.stop()));
  });
  const proxy = async (fault: Parameters<typeof startFaultProxy>[1]): Promise<FaultProxy> => {
    const p = await startFaultProxy(REGISTRY, fault);
    proxies.push(p);
    return p;
  };
  const repoVia = (p: FaultProxy): Repository => ({
    domain: p.addr,
    path: parseImageReference(FIXTURE).path,
  });

  it('fails a corrupted blob stream with DigestMismatchError', async () => {
    const layer = tree.manifests[0]!.doc.layers[0]!;
    const p = await proxy((m, path) =>
      m === 'GET' && path.includes(`/blobs/${layer.digest}`) ? { kind: 'corrupt' } : undefined,
    );
    const err = await readAll(await client.fetchBlob(repoVia(p), layer)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DigestMismatchError);
    expect((err as DigestMismatchError).expected).toBe(layer.digest);
  });

  it('refuses a tampered manifest with DigestMismatchError', async () => {
    const m = tree.manifests[0]!;
    const tampered = Buffer.from(
      m.bytes.toString('utf8').replace('"schemaVersion":2', '"schemaVersion": 2'),
    );
    expect(tampered.equals(m.bytes)).toBe(false);
    const p = await proxy((method, path) =>
      method === 'GET' && path.includes(`/manifests/${m.desc.digest}`)
        ? { kind: 'replace', body: tampered }
        : undefined,
    );
    await expect(client.fetchManifest(repoVia(p), m.desc)).rejects.toBeInstanceOf(
      DigestMismatchError,
    );
  });

  it('falls back to GET when HEAD is refused, and refuses a manifest that is not JSON', async () => {
    // HEAD is refused (as some registries do), so resolve falls back to GET, which serves garbage.
    const noHead = await proxy((method, path) => {
      if (method === 'HEAD' && path.endsWith('/manifests/latest'))
        return { kind: 'status', status: 405 };
      return method === 'GET' && path.endsWith('/manifests/latest')
        ? { kind: 'replace', body: Buffer.from('not json') }
        : undefined;
    });
    const ref = `${noHead.addr}/${parseImageReference(FIXTURE).path}:latest`;
    await expect(client.resolve(ref)).rejects.toBeInstanceOf(ManifestInvalidError);
    expect(noHead.log).toEqual([
      'HEAD /v2/busybox/manifests/latest',
      'GET /v2/busybox/manifests/latest',
    ]);
  });

  it('retries 5xx answers and connection resets, then succeeds', async () => {
    const layer = tree.manifests[0]!.doc.layers[0]!;
    let failures = 0;
    const p = await proxy((m, path) => {
      if (m === 'GET' && path.includes('/blobs/') && failures < 2) {
        failures++;
        return failures === 1 ? { kind: 'status', status: 503 } : { kind: 'reset' };
      }
      return undefined;
    });
    const bytes = await readAll(await client.fetchBlob(repoVia(p), layer));
    expect(sha256Digest(bytes)).toBe(layer.digest);
    expect(p.log.filter((l) => l.startsWith('GET') && l.includes('/blobs/'))).toHaveLength(3);
  });

  it('gives up after the bounded attempts with a retryable RegistryUnavailableError', async () => {
    const p = await proxy(() => ({ kind: 'status', status: 502 }));
    const c = new RegistryClient({ dockerConfig: false, retryBaseDelayMs: 1, maxAttempts: 3 });
    const err = await c.resolve(`${p.addr}/busybox:latest`).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RegistryUnavailableError);
    expect((err as RegistryUnavailableError).retryable).toBe(true);
    expect(p.log).toHaveLength(3);
  });
});

describe('RegistryClient push', () => {
  let tree: FixtureTree;
  const src = parseImageReference(FIXTURE);
  beforeAll(async () => {
    tree = await fixtureTree();
  });

  async function copyImage(
    dest: Repository,
    opts: { chunked?: boolean; mountFrom?: string[] },
  ): Promise<string[]> {
    const outcomes: string[] = [];
    for (const m of tree.manifests) {
      for (const b of [m.doc.config, ...m.doc.layers]) {
        const r = await client.pushBlob(dest, b, () => client.fetchBlob(src, b), { ...opts });
        outcomes.push(r.outcome);
      }
      await client.pushManifest(dest, m.desc.digest, m.bytes, m.desc.mediaType);
    }
    const top = await client.fetchManifest(src, tree.index);
    await client.pushManifest(dest, 'v1', top.bytes, tree.index.mediaType);
    return outcomes;
  }

  it('copies the fixture to a new repository (monolithic uploads) and pulls it back identical', async () => {
    const dest: Repository = { domain: REGISTRY, path: `kiln-test/push-mono-${Date.now()}` };
    const outcomes = await copyImage(dest, {});
    expect(outcomes.every((o) => o === 'uploaded')).toBe(true);
    const r = await client.resolve(`${formatReference({ ...dest, tag: 'v1' })}`);
    expect(r.descriptor.digest).toBe(tree.index.digest);
    for (const m of tree.manifests) {
      const layer = m.doc.layers[0]!;
      const bytes = await readAll(await client.fetchBlob(dest, layer));
      expect(sha256Digest(bytes)).toBe(layer.digest);
    }
    // A second push finds everything there.
    const again = await copyImage(dest, {});
    expect(again.every((o) => o === 'exists')).toBe(true);
  });

  it('uploads in chunks', async () => {
    const dest: Repository = { domain: REGISTRY, path: `kiln-test/push-chunked-${Date.now()}` };
    const chunky = new RegistryClient({ dockerConfig: false, uploadChunkBytes: 64 * 1024 });
    const layer = tree.manifests[0]!.doc.layers[0]!;
    expect(layer.size).toBeGreaterThan(3 * 64 * 1024);
    const r = await chunky.pushBlob(dest, layer, () => client.fetchBlob(src, layer), {
      chunked: true,
    });
    expect(r.outcome).toBe('uploaded');
    const bytes = await readAll(await client.fetchBlob(dest, layer));
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(layer.digest.slice(7));
  });

  it('mounts blobs across repositories when the registry can', async () => {
    const dest: Repository = { domain: REGISTRY, path: `kiln-test/push-mount-${Date.now()}` };
    const outcomes = await copyImage(dest, { mountFrom: [src.path] });
    expect(outcomes.every((o) => o === 'mounted')).toBe(true);
    const r = await client.resolve(formatReference({ ...dest, tag: 'v1' }));
    expect(r.descriptor.digest).toBe(tree.index.digest);
  });

  it('uploads when a cross-repo mount is not possible (the source repository lacks the blob)', async () => {
    const dest: Repository = { domain: REGISTRY, path: `kiln-test/push-nomount-${Date.now()}` };
    const data = Buffer.from(`a blob only here ${Date.now()}`);
    const desc = { digest: sha256Digest(data), size: data.length };
    const r = await client.pushBlob(dest, desc, () => Readable.from([data]), {
      mountFrom: [src.path],
    });
    expect(r.outcome).toBe('uploaded');
    expect(await client.statBlob(dest, desc.digest)).toBe(data.length);
  });

  it('refuses a blob whose bytes do not match the descriptor, and the registry keeps nothing', async () => {
    const dest: Repository = { domain: REGISTRY, path: `kiln-test/push-bad-${Date.now()}` };
    const data = Buffer.from('hello kiln');
    const wrong = { digest: sha256Digest(Buffer.from('something else')), size: data.length };
    await expect(client.pushBlob(dest, wrong, () => Readable.from([data]))).rejects.toBeInstanceOf(
      DigestMismatchError,
    );
    expect(await client.statBlob(dest, wrong.digest)).toBeUndefined();
    expect(await client.statBlob(dest, sha256Digest(data))).toBeUndefined();
  });

  it('pushes and pulls Docker v2 schema 2 manifests and manifest lists', async () => {
    const dest: Repository = { domain: REGISTRY, path: `kiln-test/docker-types-${Date.now()}` };
    const children: Descriptor[] = [];
    for (const m of tree.manifests) {
      const layer = m.doc.layers[0]!;
      const config = m.doc.config;
      await client.pushBlob(dest, layer, () => client.fetchBlob(src, layer), {
        mountFrom: [src.path],
      });
      await client.pushBlob(dest, config, () => client.fetchBlob(src, config), {
        mountFrom: [src.path],
      });
      const docker = {
        schemaVersion: 2,
        mediaType: MediaType.dockerManifest,
        config: { mediaType: MediaType.dockerConfig, size: config.size, digest: config.digest },
        layers: [{ mediaType: MediaType.dockerLayerGzip, size: layer.size, digest: layer.digest }],
      };
      const bytes = Buffer.from(JSON.stringify(docker));
      const digest = await client.pushManifest(
        dest,
        sha256Digest(bytes),
        bytes,
        MediaType.dockerManifest,
      );
      children.push({
        mediaType: MediaType.dockerManifest,
        digest,
        size: bytes.length,
        platform: m.desc.platform!,
      });
    }
    const list = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaType.dockerManifestList,
        manifests: children,
      }),
    );
    await client.pushManifest(dest, 'latest', list, MediaType.dockerManifestList);
    const r = await client.resolve(formatReference({ ...dest, tag: 'latest' }));
    expect(r.descriptor.mediaType).toBe(MediaType.dockerManifestList);
    const top = await client.fetchManifest(dest, r.descriptor);
    expect(top.document.kind).toBe('index');
    const child = await client.fetchManifest(dest, children[0]!);
    expect(child.document.kind === 'manifest' && child.document.manifest.layers[0]!.mediaType).toBe(
      MediaType.dockerLayerGzip,
    );
  });

  it('refuses to push a manifest that is not one', async () => {
    const dest: Repository = { domain: REGISTRY, path: 'kiln-test/invalid' };
    await expect(
      client.pushManifest(dest, 'x', Buffer.from('{"schemaVersion":1}'), MediaType.ociManifest),
    ).rejects.toBeInstanceOf(ManifestInvalidError);
  });
});
