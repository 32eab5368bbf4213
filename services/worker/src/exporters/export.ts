/**
 * Exporters: turn a result into what the user asked for (BuildKit's `--output`).
 * - `local`: the result's files copied into a directory.
 * - `tar`: the result's files as one tar stream (deterministic, like a layer against nothing).
 * - `oci` / `docker`: an image tarball (OCI image layout, or Docker's `docker load` format with
 *   manifest.json), with the image config from the frontend; `name` tags it.
 * Files written to a destination appear whole or not at all (a temp name, then rename).
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Readable, Writable } from 'node:stream';
import tar from 'tar-stream';
import type { BlobStore } from '@kiln/store';
import { copyPath } from '../fs/index.js';
import { diffLayer } from '@kiln/layers';
import { readSnapshot } from '../ops/snapshots.js';
import type { SnapshotEnv } from '../ops/snapshots.js';
import { KilnError, cleanupAfter } from '@kiln/protocol';
import { attestationDescriptor } from './attestations.js';
import type { BuiltAttestation } from './attestations.js';
import type { LayerCache, LayerRecord } from './layers.js';

export class ExportError extends KilnError {
  constructor(message: string) {
    super('EXPORT_INVALID', message);
  }
}

export interface ImageConfigInput {
  /** The OCI image config the frontend produced; rootfs is filled in here. */
  config: Record<string, unknown>;
  /** Tag(s) for the image: `name:tag` references. */
  names?: string[];
  /** The manifest's annotations (`--annotation`). */
  annotations?: Record<string, string>;
}

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';

/** A record with its keys sorted (Go's encoding/json writes maps so: stable bytes). */
export function sortedRecord(r: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(r).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/**
 * Whether images are written as an index: several platforms, or attestations (BuildKit makes an
 * index of a single platform's image too when it has an attestation manifest).
 */
export function needsIndex(images: readonly TarballImage[]): boolean {
  return images.length > 1 || images.some((t) => t.attestation);
}

/**
 * An OCI index over several platforms' manifests, with its annotations; the attestation
 * manifests come after every image, as BuildKit lists them.
 */
export function imageIndex(
  manifests: TarballImage[],
  annotations: Record<string, string> = {},
): Buffer {
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: [
        ...manifests.map((t) => ({
          mediaType: OCI_MANIFEST,
          digest: t.image.manifestDigest,
          size: t.image.manifest.length,
          ...(t.platform ? { platform: t.platform } : {}),
        })),
        ...manifests.flatMap((t) => (t.attestation ? [attestationDescriptor(t.attestation)] : [])),
      ],
      ...(Object.keys(annotations).length > 0 ? { annotations: sortedRecord(annotations) } : {}),
    }),
  );
}

const digestOf = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** Writes `produce`'s output to `dest` atomically. */
async function atomicFile(dest: string, produce: (out: Writable) => Promise<void>): Promise<void> {
  await mkdir(dirname(dest), { recursive: true });
  const tmp = `${dest}.kiln-tmp-${process.pid}-${Date.now()}`;
  try {
    const out = createWriteStream(tmp);
    await produce(out);
    await rename(tmp, dest);
  } catch (err) {
    await cleanupAfter(err, () => rm(tmp, { force: true }));
  }
}

export async function exportLocal(
  env: SnapshotEnv,
  snapshot: string | undefined,
  dest: string,
): Promise<void> {
  await mkdir(dest, { recursive: true });
  await readSnapshot(env, snapshot, (dir) =>
    copyPath(dir, '/', dest, '/', { copyDirContents: true }),
  );
}

/** The result's files as a tar stream written to `out`. */
export async function exportTar(
  env: SnapshotEnv,
  snapshot: string | undefined,
  out: Writable,
): Promise<void> {
  await readSnapshot(env, snapshot, async (dir) => {
    const layer = diffLayer({ kind: 'compare', newDir: dir }, { compression: 'none' });
    await Promise.all([pipeline(layer.stream, out), layer.done]);
  });
}

export async function exportTarFile(
  env: SnapshotEnv,
  snapshot: string | undefined,
  dest: string,
): Promise<void> {
  await atomicFile(dest, (out) => exportTar(env, snapshot, out));
}

export interface BuiltImage {
  manifest: Buffer;
  manifestDigest: string;
  config: Buffer;
  configDigest: string;
  layers: LayerRecord[];
}

/**
 * Assembles the config and manifest of an image whose filesystem is `snapshot`; with
 * `sourceDateEpoch` (BuildKit's `rewrite-timestamp=true`) the layers past the base image's (the
 * frontend's config names its diffIDs) are written with file times clamped to it.
 */
export async function buildImage(
  env: SnapshotEnv,
  store: BlobStore,
  layers: LayerCache,
  snapshot: string | undefined,
  img: ImageConfigInput,
  sourceDateEpoch?: number,
): Promise<BuiltImage> {
  const base = (img.config.rootfs as { diff_ids?: unknown } | undefined)?.diff_ids;
  const recs =
    sourceDateEpoch === undefined
      ? await layers.chainLayers(env, store, snapshot)
      : await layers.chainLayersAt(
          env,
          store,
          snapshot,
          sourceDateEpoch,
          Array.isArray(base) ? base.filter((d): d is string => typeof d === 'string') : [],
        );
  const config = {
    ...img.config,
    rootfs: { type: 'layers', diff_ids: recs.map((l) => l.diffID) },
  } as Record<string, unknown>;
  const history = Array.isArray(config.history)
    ? (config.history as { empty_layer?: boolean }[])
    : [];
  const nonEmpty = history.filter((h) => !h.empty_layer).length;
  // Keep history consistent with the layers (BuildKit does the same when they disagree).
  if (nonEmpty < recs.length) {
    config.history = [
      ...history,
      ...Array.from({ length: recs.length - nonEmpty }, () => ({
        created_by: 'kiln',
        comment: 'layer',
      })),
    ];
  }
  // As BuildKit's exporter: a config without `created` (an image from scratch) takes the time of
  // its last history entry (SOURCE_DATE_EPOCH when set).
  if (typeof config.created !== 'string') {
    const times = (Array.isArray(config.history) ? (config.history as { created?: unknown }[]) : [])
      .map((h) => h.created)
      .filter((t): t is string => typeof t === 'string');
    // Kiln's frontend stamps no times without SOURCE_DATE_EPOCH (its configs stay cacheable):
    // then the image is created when it is first assembled.
    config.created = times.length > 0 ? times[times.length - 1] : new Date().toISOString();
  }
  const configBytes = Buffer.from(JSON.stringify(config));
  const manifest = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: OCI_CONFIG, digest: digestOf(configBytes), size: configBytes.length },
    layers: recs.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
    ...(img.annotations && Object.keys(img.annotations).length > 0
      ? { annotations: sortedRecord(img.annotations) }
      : {}),
  };
  const manifestBytes = Buffer.from(JSON.stringify(manifest));
  return {
    manifest: manifestBytes,
    manifestDigest: digestOf(manifestBytes),
    config: configBytes,
    configDigest: digestOf(configBytes),
    layers: recs,
  };
}

async function addBlob(
  pack: tar.Pack,
  name: string,
  data: Buffer | Readable,
  size: number,
): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const entry = pack.entry({ name, size, mode: 0o644, mtime: new Date(0) }, (err) =>
      err ? reject(err) : resolve(),
    );
    if (Buffer.isBuffer(data)) entry.end(data);
    else data.on('error', reject).pipe(entry);
  });
}

/** One image of a tarball, with the platform it is for when the tarball holds several. */
export interface TarballImage {
  image: BuiltImage;
  platform?: { os: string; architecture: string; variant?: string };
  /** Its attestation manifest (provenance, SBOM), listed in the index after the images. */
  attestation?: BuiltAttestation;
}

/**
 * Writes an image tarball: `oci` (OCI image layout) or `docker` (also manifest.json, loadable by
 * `docker load`; one image only, as in BuildKit). Several images (a multi-platform build) become
 * one OCI index whose manifests carry their platforms. Blobs are written once each, in a fixed
 * order, so the same images give the same bytes.
 */
export async function exportImageTarball(
  store: BlobStore,
  images: TarballImage | TarballImage[],
  format: 'oci' | 'docker',
  names: string[],
  out: Writable,
  indexAnnotations: Record<string, string> = {},
): Promise<void> {
  const list = Array.isArray(images) ? images : [images];
  if (list.length === 0) throw new TypeError('exportImageTarball: no image');
  if (format === 'docker' && list.length > 1) {
    throw new ExportError(
      'the docker exporter holds one platform; use type=oci for a multi-platform image',
    );
  }
  const pack = tar.pack();
  const done = pipeline(pack, out);
  const blob = (d: string): string => `blobs/sha256/${d.slice('sha256:'.length)}`;
  const manifestDesc = (t: TarballImage): Record<string, unknown> => ({
    mediaType: OCI_MANIFEST,
    digest: t.image.manifestDigest,
    size: t.image.manifest.length,
    ...(t.platform && needsIndex(list) ? { platform: t.platform } : {}),
  });
  let top: Record<string, unknown>;
  const extra: { name: string; data: Buffer }[] = [];
  if (!needsIndex(list)) {
    top = manifestDesc(list[0]!);
  } else {
    // The index of the platforms' manifests is itself a blob; index.json points at it.
    const idx = imageIndex(list, indexAnnotations);
    const d = digestOf(idx);
    extra.push({ name: blob(d), data: idx });
    top = { mediaType: OCI_INDEX, digest: d, size: idx.length };
  }
  const index = {
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: (names.length ? names : ['']).map((n) =>
      n
        ? {
            ...top,
            annotations: {
              'io.containerd.image.name': n,
              'org.opencontainers.image.ref.name': n.split(':').pop(),
            },
          }
        : top,
    ),
  };
  try {
    await addBlob(pack, 'oci-layout', Buffer.from('{"imageLayoutVersion":"1.0.0"}'), 30);
    const indexBytes = Buffer.from(JSON.stringify(index));
    await addBlob(pack, 'index.json', indexBytes, indexBytes.length);
    if (format === 'docker') {
      const img = list[0]!.image;
      const m = Buffer.from(
        JSON.stringify([
          {
            Config: blob(img.configDigest),
            RepoTags: names,
            Layers: img.layers.map((l) => blob(l.digest)),
          },
        ]),
      );
      await addBlob(pack, 'manifest.json', m, m.length);
    }
    const seen = new Set<string>();
    const once = async (
      name: string,
      data: Buffer | (() => Promise<Readable>),
      size: number,
    ): Promise<void> => {
      if (seen.has(name)) return;
      seen.add(name);
      await addBlob(pack, name, Buffer.isBuffer(data) ? data : await data(), size);
    };
    for (const e of extra) await once(e.name, e.data, e.data.length);
    for (const { image } of list) {
      await once(blob(image.manifestDigest), image.manifest, image.manifest.length);
      await once(blob(image.configDigest), image.config, image.config.length);
      for (const l of image.layers)
        await once(blob(l.digest), () => store.get(l.digest as `sha256:${string}`), l.size);
    }
    for (const { attestation: a } of list) {
      if (!a) continue;
      await once(blob(a.manifestDigest), a.manifest, a.manifest.length);
      await once(blob(a.configDigest), a.config, a.config.length);
      for (const l of a.layers) await once(blob(l.digest), l.data, l.data.length);
    }
    pack.finalize();
  } catch (err) {
    pack.destroy(err as Error);
  }
  await done;
}

export async function exportImageTarballFile(
  store: BlobStore,
  image: TarballImage | TarballImage[],
  format: 'oci' | 'docker',
  names: string[],
  dest: string,
  indexAnnotations: Record<string, string> = {},
): Promise<void> {
  await atomicFile(dest, (out) =>
    exportImageTarball(store, image, format, names, out, indexAnnotations),
  );
}
