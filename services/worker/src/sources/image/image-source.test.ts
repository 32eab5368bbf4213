import { lstat, readFile, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { parseImageReference } from '@kiln/llb';
import { DigestMismatchError, FsBlobStore, sha256Digest } from '@kiln/store';
import { afterAll, describe, expect, it } from 'vitest';
import { LayerError, LayerErrorCode, zstdSupport } from '@kiln/layers';
import {
  ImageNotFoundError,
  MediaType,
  PlatformNotFoundError,
  RegistryClient,
  RegistryUnavailableError,
} from '@kiln/registry';
import type { Repository } from '@kiln/registry';
import { ImageSource } from './image-source.js';
import { harnessEnv, startFaultProxy, waitFor, makeTempDir } from '@kiln/testing';
import type { FaultProxy } from '@kiln/testing';

const REGISTRY = harnessEnv('KILN_TEST_REGISTRY');
const FIXTURE = harnessEnv('KILN_TEST_FIXTURE_IMAGE');
const AMD64 = { os: 'linux', architecture: 'amd64' };
const ARM64 = { os: 'linux', architecture: 'arm64' };
const client = new RegistryClient({ dockerConfig: false, retryBaseDelayMs: 10 });

const cleanups: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

function newStore(): FsBlobStore {
  const tmp = makeTempDir('store');
  cleanups.push(tmp.remove);
  return new FsBlobStore({ root: tmp.dir, fsync: false });
}

function newDir(name: string): string {
  const tmp = makeTempDir(name);
  cleanups.push(tmp.remove);
  return tmp.dir;
}

async function proxy(fault: Parameters<typeof startFaultProxy>[1]): Promise<FaultProxy> {
  const p = await startFaultProxy(REGISTRY, fault);
  cleanups.push(p.stop);
  return p;
}

async function listStore(store: FsBlobStore): Promise<string[]> {
  const out: string[] = [];
  for await (const b of store.list()) out.push(b.digest);
  return out.sort();
}

describe('ImageSource', () => {
  it('pulls the fixture for linux/amd64 and linux/arm64: different layers, configs of the right architecture', async () => {
    const store = newStore();
    const src = new ImageSource({ client, store });
    const amd = await src.pull(`docker-image://${FIXTURE}`, AMD64);
    const arm = await src.pull(`docker-image://${FIXTURE}`, ARM64);
    expect(amd.config.architecture).toBe('amd64');
    expect(arm.config.architecture).toBe('arm64');
    expect(amd.config.os).toBe('linux');
    expect(amd.digest).toBe(arm.digest); // the index
    expect(amd.ref).toBe(`${FIXTURE}@${amd.digest}`);
    expect(amd.manifestDigest).not.toBe(arm.manifestDigest);
    expect(amd.layers).toHaveLength(1);
    expect(amd.layers[0]!.digest).not.toBe(arm.layers[0]!.digest);
    expect(amd.layers[0]!.mediaType).toBe(MediaType.ociLayerGzip);
    for (const img of [amd, arm]) {
      for (const l of img.layers) {
        expect(await store.stat(l.digest)).toEqual({ size: l.size });
        // diffID is the uncompressed tar's digest
        const blob = await readFile(store.pathOf(l.digest));
        expect(sha256Digest(gunzipSync(blob))).toBe(l.diffID);
      }
      expect(await store.has(img.configDigest)).toBe(true);
      expect(await store.has(img.manifestDigest)).toBe(true);
    }
    expect(await store.has(amd.digest)).toBe(true);
  });

  it('pulls by digest (the index, and one platform manifest)', async () => {
    const store = newStore();
    const src = new ImageSource({ client, store });
    const byTag = await src.resolve(FIXTURE, ARM64);
    const { domain, path } = parseImageReference(FIXTURE);
    const byIndex = await src.pull(`docker-image://${domain}/${path}@${byTag.digest}`, ARM64);
    expect(byIndex.manifestDigest).toBe(byTag.manifestDigest);
    const byManifest = await src.pull(`${domain}/${path}@${byTag.manifestDigest}`, ARM64);
    expect(byManifest.digest).toBe(byTag.manifestDigest);
    expect(byManifest.layers).toEqual(byTag.layers);
    // A single-platform manifest is still checked against the platform asked for.
    const err = await src
      .resolve(`${domain}/${path}@${byTag.manifestDigest}`, AMD64)
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PlatformNotFoundError);
    expect((err as PlatformNotFoundError).available).toEqual(['linux/arm64']);
  });

  it('reports a missing tag as ImageNotFoundError and a missing platform as PlatformNotFoundError', async () => {
    const src = new ImageSource({ client, store: newStore() });
    await expect(src.pull(`${REGISTRY}/busybox:nope`, AMD64)).rejects.toBeInstanceOf(
      ImageNotFoundError,
    );
    const err = await src
      .pull(FIXTURE, { os: 'linux', architecture: 's390x' })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PlatformNotFoundError);
    expect((err as PlatformNotFoundError).available).toEqual(['linux/amd64', 'linux/arm64']);
    expect((err as Error).message).toContain('linux/s390x');
    expect((err as Error).message).toContain('linux/amd64, linux/arm64');
  });

  it('fails a corrupted layer with DigestMismatchError and stores nothing of it', async () => {
    const good = await new ImageSource({ client, store: newStore() }).resolve(FIXTURE, AMD64);
    const layer = good.layers[0]!;
    const p = await proxy((m, path) =>
      m === 'GET' && path.includes(`/blobs/${layer.digest}`) ? { kind: 'corrupt' } : undefined,
    );
    const store = newStore();
    const src = new ImageSource({ client, store });
    const ref = `${p.addr}/${parseImageReference(FIXTURE).path}:latest`;
    await expect(src.pull(ref, AMD64)).rejects.toBeInstanceOf(DigestMismatchError);
    expect(await store.has(layer.digest)).toBe(false);
    // Only the verified manifests and config are kept; not retried (a mismatch is not transient).
    expect(await listStore(store)).toEqual(
      [good.configDigest, good.digest, good.manifestDigest].sort(),
    );
    expect(p.log.filter((l) => l === `GET /v2/busybox/blobs/${layer.digest}`)).toHaveLength(1);
  });

  it('fails a tampered platform manifest with DigestMismatchError and stores nothing of it', async () => {
    const good = await new ImageSource({ client, store: newStore() }).resolve(FIXTURE, AMD64);
    const p = await proxy((m, path) =>
      m === 'GET' && path.endsWith(`/manifests/${good.manifestDigest}`)
        ? { kind: 'corrupt' }
        : undefined,
    );
    const store = newStore();
    await expect(
      new ImageSource({ client, store }).pull(`${p.addr}/busybox:latest`, AMD64),
    ).rejects.toBeInstanceOf(DigestMismatchError);
    expect(await listStore(store)).toEqual([good.digest]);
  });

  it('retries a download that breaks off, and gives up with a retryable error after blobAttempts', async () => {
    const layer = (await new ImageSource({ client, store: newStore() }).resolve(FIXTURE, AMD64))
      .layers[0]!;
    let broken = 0;
    const flaky = await proxy((m, path) =>
      m === 'GET' && path.includes(`/blobs/${layer.digest}`) && broken++ < 1
        ? { kind: 'truncate' }
        : undefined,
    );
    const store = newStore();
    const img = await new ImageSource({ client, store }).pull(
      `${flaky.addr}/busybox:latest`,
      AMD64,
    );
    expect(await store.stat(img.layers[0]!.digest)).toEqual({ size: layer.size });
    expect(flaky.log.filter((l) => l === `GET /v2/busybox/blobs/${layer.digest}`)).toHaveLength(2);

    const dead = await proxy((m, path) =>
      m === 'GET' && path.includes(`/blobs/${layer.digest}`) ? { kind: 'truncate' } : undefined,
    );
    const store2 = newStore();
    const err = await new ImageSource({ client, store: store2, blobAttempts: 2 })
      .pull(`${dead.addr}/busybox:latest`, AMD64)
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RegistryUnavailableError);
    expect(dead.log.filter((l) => l === `GET /v2/busybox/blobs/${layer.digest}`)).toHaveLength(2);
    expect(await store2.has(layer.digest)).toBe(false);
  });

  it('pulls an image with Docker media types (manifest list, v2 schema 2, rootfs.diff.tar.gzip)', async () => {
    const base = await new ImageSource({ client, store: newStore() }).resolve(FIXTURE, ARM64);
    const fixtureRepo = parseImageReference(FIXTURE);
    const repo: Repository = { domain: REGISTRY, path: 'kiln-test/docker-media-types' };
    const layer = base.manifest.layers[0]!;
    const config = base.manifest.config;
    for (const b of [layer, config])
      await client.pushBlob(repo, b, Buffer.alloc(0), { mountFrom: [fixtureRepo.path] });
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaType.dockerManifest,
        config: { mediaType: MediaType.dockerConfig, size: config.size, digest: config.digest },
        layers: [{ mediaType: MediaType.dockerLayerGzip, size: layer.size, digest: layer.digest }],
      }),
    );
    const manifestDigest = await client.pushManifest(
      repo,
      sha256Digest(manifest),
      manifest,
      MediaType.dockerManifest,
    );
    const list = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaType.dockerManifestList,
        manifests: [
          {
            mediaType: MediaType.dockerManifest,
            size: manifest.length,
            digest: manifestDigest,
            platform: { architecture: 'arm64', os: 'linux', variant: 'v8' },
          },
        ],
      }),
    );
    await client.pushManifest(repo, 'latest', list, MediaType.dockerManifestList);
    const src = new ImageSource({ client, store: newStore() });
    const img = await src.pull(`${REGISTRY}/${repo.path}:latest`, ARM64);
    expect(img.manifestDigest).toBe(manifestDigest);
    expect(img.layers).toEqual([
      {
        digest: layer.digest,
        diffID: base.layers[0]!.diffID,
        size: layer.size,
        mediaType: MediaType.dockerLayerGzip,
      },
    ]);
    const root = newDir('rootfs-docker');
    await src.unpack(img.layers, root);
    expect((await readFile(join(root, 'bin/busybox'))).readUInt16LE(18)).toBe(0xb7); // aarch64
  });

  it('judges index entries without a platform by their config, as containerd does', async () => {
    const fixtureRepo = parseImageReference(FIXTURE);
    const amd = await new ImageSource({ client, store: newStore() }).resolve(FIXTURE, AMD64);
    const arm = await new ImageSource({ client, store: newStore() }).resolve(FIXTURE, ARM64);
    const repo: Repository = { domain: REGISTRY, path: 'kiln-test/unlabelled-index' };
    const entries = [];
    for (const img of [amd, arm]) {
      for (const b of [img.manifest.config, ...img.manifest.layers]) {
        await client.pushBlob(repo, b, Buffer.alloc(0), { mountFrom: [fixtureRepo.path] });
      }
      const m = Buffer.from(JSON.stringify(img.manifest));
      const digest = await client.pushManifest(repo, sha256Digest(m), m, MediaType.ociManifest);
      entries.push({ mediaType: MediaType.ociManifest, digest, size: m.length });
    }
    const index = Buffer.from(
      JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: entries }),
    );
    await client.pushManifest(repo, 'latest', index, MediaType.ociIndex);
    const src = new ImageSource({ client, store: newStore() });
    const got = await src.resolve(`${REGISTRY}/${repo.path}:latest`, ARM64);
    expect(got.config.architecture).toBe('arm64');
    expect(got.manifestDigest).toBe(entries[1]!.digest);
    const err = await src
      .resolve(`${REGISTRY}/${repo.path}:latest`, { os: 'linux', architecture: 'riscv64' })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PlatformNotFoundError);
    expect((err as PlatformNotFoundError).available).toEqual(['linux/amd64', 'linux/arm64']);
  });

  it('skips blobs already in the store and shares concurrent downloads of the same blob', async () => {
    const layer = (await new ImageSource({ client, store: newStore() }).resolve(FIXTURE, AMD64))
      .layers[0]!;
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    // The layer download is held in flight until the second pull has asked for the same blob.
    const p = await proxy((m, path) =>
      m === 'GET' && path.includes(`/blobs/${layer.digest}`)
        ? { kind: 'hold', until: released }
        : undefined,
    );
    const ref = `${p.addr}/busybox:latest`;
    const configReads: string[] = [];
    class WatchedStore extends FsBlobStore {
      override get(...args: Parameters<FsBlobStore['get']>): ReturnType<FsBlobStore['get']> {
        configReads.push(args[0]);
        return super.get(...args);
      }
    }
    const tmp = makeTempDir('store');
    cleanups.push(tmp.remove);
    const store = new WatchedStore({ root: tmp.dir, fsync: false });
    const a = new ImageSource({ client, store });
    const b = new ImageSource({ client, store });
    const layerGets = (): string[] =>
      p.log.filter((l) => l === `GET /v2/busybox/blobs/${layer.digest}`);
    const pullA = a.pull(ref, AMD64);
    await waitFor('the first layer download to start', () => layerGets().length === 1);
    const pullB = b.pull(ref, AMD64);
    // B read the config from the store (A put it there): B is about to ask for the layer.
    await waitFor('the second pull to read the config', () => configReads.length >= 1);
    release();
    const [x, y] = await Promise.all([pullA, pullB]);
    expect(y.layers).toEqual(x.layers);
    expect(layerGets()).toHaveLength(1);
    expect(await store.stat(layer.digest)).toEqual({ size: layer.size });
    // Already present: a later pull does not download it again.
    await new ImageSource({ client, store }).pull(ref, AMD64);
    expect(layerGets()).toHaveLength(1);
  });

  it('unpacks into a directory: /bin/busybox, bin/sh a symlink to busybox, /etc/passwd', async () => {
    const store = newStore();
    const src = new ImageSource({ client, store });
    const img = await src.pull(FIXTURE, AMD64);
    const root = newDir('rootfs');
    await src.unpack(img.layers, root);
    const bb = await lstat(join(root, 'bin/busybox'));
    expect(bb.isFile()).toBe(true);
    expect(bb.mode & 0o111).not.toBe(0);
    expect((await lstat(join(root, 'bin/sh'))).isSymbolicLink()).toBe(true);
    expect(await readlink(join(root, 'bin/sh'))).toBe('busybox');
    expect(await readFile(join(root, 'etc/passwd'), 'utf8')).toContain('root:x:0:0:');
    // An ELF for x86-64 (e_machine 0x3e).
    const head = await readFile(join(root, 'bin/busybox'));
    expect(head.readUInt16LE(18)).toBe(0x3e);
  });

  it('refuses to unpack a layer whose content does not match its diffID', async () => {
    const store = newStore();
    const src = new ImageSource({ client, store });
    const img = await src.pull(FIXTURE, AMD64);
    const arm = await src.pull(FIXTURE, ARM64);
    const mixed = [{ ...img.layers[0]!, diffID: arm.layers[0]!.diffID }];
    await expect(src.unpack(mixed, newDir('rootfs-bad'))).rejects.toBeInstanceOf(
      DigestMismatchError,
    );
  });

  it('pulls and unpacks uncompressed and zstd layers (or names zstd as unsupported where it is)', async () => {
    // Re-encode the fixture's amd64 layer and push single-platform images with those layers.
    const base = await new ImageSource({ client, store: newStore() }).pull(FIXTURE, AMD64);
    const chunks: Buffer[] = [];
    for await (const c of await client.fetchBlob(parseImageReference(FIXTURE), base.layers[0]!))
      chunks.push(c as Buffer);
    const tarBytes = gunzipSync(Buffer.concat(chunks));
    const variants = [
      { name: 'plain', mediaType: MediaType.ociLayer, bytes: tarBytes },
      { name: 'zstd', mediaType: MediaType.ociLayerZstd, bytes: zstdRawFrame(tarBytes) },
    ];
    for (const v of variants) {
      const repo: Repository = { domain: REGISTRY, path: `kiln-test/layer-${v.name}` };
      const layerDesc = {
        mediaType: v.mediaType,
        digest: sha256Digest(v.bytes),
        size: v.bytes.length,
      };
      await client.pushBlob(repo, layerDesc, v.bytes);
      const config = Buffer.from(
        JSON.stringify({
          ...base.config,
          rootfs: { type: 'layers', diff_ids: [sha256Digest(tarBytes)] },
        }),
      );
      const configDesc = {
        mediaType: MediaType.ociConfig,
        digest: sha256Digest(config),
        size: config.length,
      };
      await client.pushBlob(repo, configDesc, config);
      const manifest = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: MediaType.ociManifest,
          config: configDesc,
          layers: [layerDesc],
        }),
      );
      await client.pushManifest(repo, 'latest', manifest, MediaType.ociManifest);

      const src = new ImageSource({ client, store: newStore() });
      const img = await src.pull(`${REGISTRY}/${repo.path}:latest`, AMD64);
      expect(img.layers[0]!.mediaType).toBe(v.mediaType);
      const root = newDir(`rootfs-${v.name}`);
      if (v.name === 'zstd' && zstdSupport() === undefined) {
        // Neither node's zlib zstd (>= 22.15) nor the zstd command: a typed gap, not a silent failure.
        const err = await src.unpack(img.layers, root).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(LayerError);
        expect((err as LayerError).code).toBe(LayerErrorCode.UnsupportedCompression);
        continue;
      }
      await src.unpack(img.layers, root);
      expect(await readlink(join(root, 'bin/sh'))).toBe('busybox');
    }
  });
});

/**
 * A valid zstd frame made of raw (stored) blocks: real zstd framing without a compressor, so the
 * test needs no zstd tool to make one. Window 128 KiB (descriptor 0x38), blocks of at most 128 KiB.
 */
function zstdRawFrame(data: Buffer): Buffer {
  const parts: Buffer[] = [Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38])];
  const max = 128 * 1024;
  for (let off = 0; off < data.length || off === 0; off += max) {
    const block = data.subarray(off, Math.min(off + max, data.length));
    const last = off + max >= data.length ? 1 : 0;
    const header = (block.length << 3) | last; // block type 0 (raw) in bits 1-2
    parts.push(Buffer.from([header & 0xff, (header >> 8) & 0xff, (header >> 16) & 0xff]), block);
    if (last) break;
  }
  return Buffer.concat(parts);
}
