import type { ImageReference } from '@kiln/llb';
import { forEachLimit } from '@kiln/common';
import { KilnError } from '@kiln/protocol';
import type { Platform } from '@kiln/protocol';
import { DigestMismatchError } from '@kiln/store';
import type { BlobStore, Digest } from '@kiln/store';
import { applyLayer } from '@kiln/layers';
import type { ApplyOptions } from '@kiln/layers';
import { resolvePlatformImage, toReference } from '@kiln/registry';
import type {
  Descriptor,
  ImageConfig,
  ImageManifest,
  RegistryClient,
  Repository,
} from '@kiln/registry';

/** One layer of a pulled image, in application order. */
export interface ImageLayer {
  /** Digest of the blob as stored (compressed). */
  digest: Digest;
  /** Digest of the uncompressed tar, from the image config's `rootfs.diff_ids`. */
  diffID: Digest;
  size: number;
  mediaType: string;
}

/** An image resolved for one platform (and, after {@link ImageSource.pull}, with its blobs in the store). */
export interface ResolvedImage {
  /** The reference with the digest of what it resolved to (the index for multi-platform images). */
  ref: string;
  /** Digest the reference resolved to: the index, or the manifest for single-platform images. */
  digest: Digest;
  manifestDigest: Digest;
  manifest: ImageManifest;
  configDigest: Digest;
  config: ImageConfig;
  layers: ImageLayer[];
  /** The platform of the image, from its config. */
  platform: Platform;
}

export interface ImageSourceOptions {
  client: RegistryClient;
  /** The local content cache: layers, manifests and configs are kept here by digest. */
  store: BlobStore;
  /** Layer downloads in parallel per pull (default 4). */
  concurrency?: number;
  /** Attempts per blob when a download breaks off (retryable errors only; default 3). */
  blobAttempts?: number;
}

/**
 * In-flight blob fetches per store, shared by every ImageSource of the process: two pulls that
 * need the same blob at the same time download it once.
 */
const inflight = new WeakMap<BlobStore, Map<Digest, Promise<void>>>();

function inflightFor(store: BlobStore): Map<Digest, Promise<void>> {
  let m = inflight.get(store);
  if (m === undefined) {
    m = new Map();
    inflight.set(store, m);
  }
  return m;
}

/**
 * The `docker-image://` source: resolves an image reference for a platform, fetches the blobs the
 * local store lacks (verified; a bad blob is never stored), and unpacks layers into a directory.
 * Safe for concurrent use.
 */
export class ImageSource {
  private readonly client: RegistryClient;
  private readonly store: BlobStore;
  private readonly concurrency: number;
  private readonly blobAttempts: number;

  constructor(opts: ImageSourceOptions) {
    this.client = opts.client;
    this.store = opts.store;
    this.concurrency = opts.concurrency ?? 4;
    this.blobAttempts = opts.blobAttempts ?? 3;
  }

  /**
   * Resolves `identifier` (`docker-image://<ref>` or a plain reference) for `platform`: the
   * platform's manifest and its config, without downloading layers. Manifests and the config are
   * put in the store.
   */
  async resolve(identifier: string | ImageReference, platform: Platform): Promise<ResolvedImage> {
    const img = await resolvePlatformImage(this.client, identifier, platform, {
      get: async (desc) => {
        // touch, not has: a reused blob must look used to the store's collector (cache-store).
        if (!(await this.store.touch(desc.digest))) return undefined;
        const chunks: Buffer[] = [];
        for await (const c of await this.store.get(desc.digest)) chunks.push(c as Buffer);
        return Buffer.concat(chunks);
      },
      put: async (desc, bytes) => {
        await this.store.put(desc.digest, bytes, { size: bytes.length, mediaType: desc.mediaType });
      },
    });
    return this.finish(
      img.name,
      img.digest,
      img.manifestDescriptor,
      img.manifest,
      img.config,
      img.platform,
    );
  }

  private finish(
    name: string,
    digest: Digest,
    manifestDesc: Descriptor,
    manifest: ImageManifest,
    config: ImageConfig,
    imagePlatform: Platform,
  ): ResolvedImage {
    const layers = manifest.layers.map((l, i) => ({
      digest: l.digest,
      diffID: config.rootfs.diff_ids[i]!,
      size: l.size,
      mediaType: l.mediaType,
    }));
    return {
      ref: name,
      digest,
      manifestDigest: manifestDesc.digest,
      manifest,
      configDigest: manifest.config.digest,
      config,
      layers,
      platform: imagePlatform,
    };
  }

  /**
   * Resolves the image and makes sure every layer blob is in the store, downloading only those
   * missing. Concurrent pulls needing the same blob share one download.
   */
  async pull(identifier: string | ImageReference, platform: Platform): Promise<ResolvedImage> {
    const img = await this.resolve(identifier, platform);
    const repo = toReference(identifier);
    await forEachLimit(img.layers, this.concurrency, (l) => this.ensureBlob(repo, l));
    return img;
  }

  /**
   * Applies `layers` in order onto `rootDir` (gzip, zstd and uncompressed layers; whiteouts and
   * opaque directories) from the store, and checks each layer's uncompressed digest against its
   * diffID. On error `rootDir` holds a partial tree: apply into a fresh directory and discard it.
   */
  async unpack(
    layers: readonly ImageLayer[],
    rootDir: string,
    opts: ApplyOptions = {},
  ): Promise<void> {
    for (const layer of layers) {
      const stream = await this.store.get(layer.digest);
      const res = await applyLayer(stream, rootDir, opts);
      if (res.diffID !== layer.diffID) {
        throw new DigestMismatchError(layer.diffID, res.diffID, {
          details: { what: `diffID of layer ${layer.digest}` },
        });
      }
    }
  }

  /** Downloads a blob into the store unless it is there; shares in-flight downloads. */
  private ensureBlob(repo: Repository, layer: ImageLayer): Promise<void> {
    const map = inflightFor(this.store);
    const running = map.get(layer.digest);
    if (running !== undefined) return running;
    const p = (async () => {
      if ((await this.store.stat(layer.digest))?.size === layer.size) return;
      for (let attempt = 1; ; attempt++) {
        try {
          // The store verifies digest and size as it writes (nothing unverified becomes visible),
          // so the stream is not hashed a second time on the way.
          const body = await this.client.fetchBlob(repo, layer, { verify: false });
          await this.store.put(layer.digest, body, {
            size: layer.size,
            mediaType: layer.mediaType,
          });
          return;
        } catch (err) {
          if (!(err instanceof KilnError && err.retryable) || attempt >= this.blobAttempts)
            throw err;
        }
      }
    })();
    map.set(layer.digest, p);
    const clear = (): void => {
      if (map.get(layer.digest) === p) map.delete(layer.digest);
    };
    p.then(clear, clear);
    return p;
  }
}
