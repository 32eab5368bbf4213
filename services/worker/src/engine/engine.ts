/**
 * The worker engine: the resources one machine needs to run LLB ops and export their results
 * (BuildKit's OCI worker). It owns, under one state dir: the content store (`content/`, unless
 * one is handed in), snapshots (`snapshots/`), the OCI runtime's bundles and cache mounts
 * (`exec/`), the layer cache (`layers.jsonl`) and scratch space (`tmp/`); the state dir is 0700.
 * The task runner (`node/task-runner.ts`) runs ops on it, task by task, with the executors of
 * each op kind.
 */
import { chmod, mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { FsBlobStore } from '@kiln/store';
import type { BlobStore } from '@kiln/store';
import { readSnapshot } from '../ops/snapshots.js';
import type { SnapshotEnv } from '../ops/snapshots.js';
import { RegistryClient, chainCredentials } from '@kiln/registry';
import type { CredentialsProvider, RegistryClientOptions } from '@kiln/registry';
import { OciRuntime } from '../runtime/index.js';
import type { RuntimeName, TaskLimits } from '../runtime/index.js';
import { openSnapshotter, unmountUnder } from '../snapshot/index.js';
import type { Snapshotter } from '../snapshot/index.js';
import { ImageSource } from '../sources/image/index.js';
import {
  buildImage,
  exportImageTarballFile,
  exportLocal,
  exportTarFile,
} from '../exporters/export.js';
import type { BuiltImage, TarballImage } from '../exporters/export.js';
import { buildAttestation, subjectsOf } from '../exporters/attestations.js';
import type { Predicate } from '../exporters/attestations.js';
import { SPDX_PREDICATE_TYPE, spdxDocument } from '../exporters/sbom.js';
import { LayerCache } from '../exporters/layers.js';
import { pushImages } from '../exporters/push.js';
import type { PushResult } from '../exporters/push.js';

export interface EngineOptions {
  /** Everything the engine keeps lives here. */
  stateDir: string;
  snapshotter?: 'auto' | 'overlayfs' | 'native';
  runtime?: RuntimeName | 'auto';
  /**
   * The registry client's options for pulls and pushes that carry no credentials of their build
   * (`dockerConfig: false` keeps the worker's own docker config out of builds).
   */
  registry?: RegistryClientOptions;
  /** The content store; default a filesystem store under `<stateDir>/content`. */
  store?: BlobStore;
  /** Limits of every exec's container (`OciRuntimeOptions.limits`). */
  limits?: TaskLimits;
  /** Addresses the sandbox network may not reach (`OciRuntimeOptions.sandboxDeny`). */
  sandboxDeny?: string[];
  /** Where task cgroups are made (`OciRuntimeOptions.cgroupRoot`). */
  cgroupRoot?: string;
}

/** Where a result's files go (BuildKit's `--output` of type local or tar). */
export type ExportSpec = { type: 'local'; dest: string } | { type: 'tar'; dest: string };

/** How results are made into images. */
export interface ImageOptions {
  /** The image names (`name:tag`): tags of a tarball, subjects of attestations. */
  names?: string[];
  /** Scan each filesystem for an SPDX SBOM attestation (`attest:sbom`). */
  sbom?: boolean;
  /**
   * SOURCE_DATE_EPOCH (seconds) with `rewrite-timestamp=true`: file times in the layers the build
   * made are clamped to it (the base image's layers are kept as pulled).
   */
  sourceDateEpoch?: number;
}

/** One platform's result made into an image (multi-platform exports and pushes). */
export interface ImageResult {
  snapshot: string | undefined;
  config: Record<string, unknown>;
  platform: { os: string; architecture: string; variant?: string };
  /** The manifest's annotations. */
  annotations?: Record<string, string>;
  /** In-toto predicates about the image (provenance), attached as its attestation manifest. */
  predicates?: Predicate[];
}

export class Engine {
  private constructor(
    readonly stateDir: string,
    readonly store: BlobStore,
    readonly snapshotter: Snapshotter,
    /** The OCI runtime, opened (and probed) on first use: a fully cached build never needs it. */
    readonly runtime: () => Promise<OciRuntime>,
    readonly images: ImageSource,
    private readonly env: SnapshotEnv,
    readonly layers: LayerCache,
    readonly registry: RegistryClient,
    private readonly registryOptions: RegistryClientOptions,
    private readonly closeRuntime: () => Promise<void>,
  ) {}

  /**
   * Releases what the runtime holds on the machine while idle (the sandbox network's pooled
   * namespaces); the next exec opens it again. Call once no exec runs.
   */
  async close(): Promise<void> {
    await this.closeRuntime();
  }

  /**
   * A registry client for one build's credentials (its client's, through the session), asked
   * before what the engine's options allow (the worker's docker config only when they do); its
   * tokens are that build's alone. Without credentials, the engine's client.
   */
  registryFor(credentials: CredentialsProvider | undefined): RegistryClient {
    if (!credentials) return this.registry;
    const own = this.registryOptions.credentials;
    return new RegistryClient({
      ...this.registryOptions,
      credentials: own ? chainCredentials(credentials, own) : credentials,
    });
  }

  /** The image source for one build's credentials (see {@link registryFor}). */
  imagesFor(credentials: CredentialsProvider | undefined): ImageSource {
    if (!credentials) return this.images;
    return new ImageSource({ client: this.registryFor(credentials), store: this.store });
  }

  static async open(o: EngineOptions): Promise<Engine> {
    // The worker's user only: snapshots hold what builds made (setuid-root binaries among them),
    // which no other local user may reach. An existing state dir is tightened.
    await mkdir(o.stateDir, { recursive: true, mode: 0o700 });
    await chmod(o.stateDir, 0o700);
    const tmpDir = join(o.stateDir, 'tmp');
    // A process killed mid-op left its views mounted here: unmounted first, or the removal would
    // reach into them (and fail on a read-only one, leaving the worker unable to start).
    await unmountUnder(tmpDir);
    await rm(tmpDir, { recursive: true, force: true });
    await mkdir(tmpDir, { recursive: true });
    const store = o.store ?? new FsBlobStore({ root: join(o.stateDir, 'content') });
    const snapshotter = await openSnapshotter({
      root: join(o.stateDir, 'snapshots'),
      backend: o.snapshotter ?? 'auto',
    });
    let opening: Promise<OciRuntime> | undefined;
    const runtime = (): Promise<OciRuntime> => {
      opening ??= OciRuntime.open({
        stateDir: join(o.stateDir, 'exec'),
        runtime: o.runtime ?? 'auto',
        ...(o.limits ? { limits: o.limits } : {}),
        ...(o.sandboxDeny ? { sandboxDeny: o.sandboxDeny } : {}),
        ...(o.cgroupRoot ? { cgroupRoot: o.cgroupRoot } : {}),
      });
      // A failed open is retried by the next exec rather than remembered.
      opening.catch(() => (opening = undefined));
      return opening;
    };
    const closeRuntime = async (): Promise<void> => {
      const was = opening;
      opening = undefined;
      await (await was?.catch(() => undefined))?.close();
    };
    const client = new RegistryClient(o.registry ?? {});
    const images = new ImageSource({ client, store });
    const env: SnapshotEnv = { snapshotter, tmpDir };
    const layers = await LayerCache.open(
      join(o.stateDir, 'layers.jsonl'),
      undefined,
      join(o.stateDir, 'layers.json'),
    );
    return new Engine(
      o.stateDir,
      store,
      snapshotter,
      runtime,
      images,
      env,
      layers,
      client,
      o.registry ?? {},
      closeRuntime,
    );
  }

  /** The image (config, manifest, layers in the store) whose filesystem is `snapshot`. */
  buildImage(
    snapshot: string | undefined,
    config: Record<string, unknown>,
    annotations?: Record<string, string>,
    sourceDateEpoch?: number,
  ): Promise<BuiltImage> {
    return buildImage(
      this.env,
      this.store,
      this.layers,
      snapshot,
      { config, ...(annotations ? { annotations } : {}) },
      sourceDateEpoch,
    );
  }

  /** Writes a result's files where `spec` says (images: {@link Engine.images}). */
  async export(snapshot: string | undefined, spec: ExportSpec): Promise<void> {
    switch (spec.type) {
      case 'local':
        return exportLocal(this.env, snapshot, spec.dest);
      case 'tar':
        return exportTarFile(this.env, snapshot, spec.dest);
    }
  }

  /**
   * Each platform's result made into an image (its layers in the store), with its attestation
   * manifest when it has predicates or `sbom` asks for a scan of its filesystem.
   */
  async imagesOf(results: ImageResult[], o: ImageOptions = {}): Promise<TarballImage[]> {
    const out: TarballImage[] = [];
    for (const r of results) {
      const image = await this.buildImage(r.snapshot, r.config, r.annotations, o.sourceDateEpoch);
      const predicates = [...(r.predicates ?? [])];
      if (o.sbom) {
        const created = String(
          (JSON.parse(image.config.toString()) as { created?: unknown }).created,
        );
        predicates.push({
          predicateType: SPDX_PREDICATE_TYPE,
          predicate: await this.read(r.snapshot, (dir) =>
            spdxDocument(dir, o.names?.[0] ?? 'image', created),
          ),
        });
      }
      out.push({
        image,
        platform: r.platform,
        ...(predicates.length > 0
          ? {
              attestation: buildAttestation(
                predicates,
                subjectsOf(o.names ?? [], r.platform, image.manifestDigest),
                image.manifestDigest,
              ),
            }
          : {}),
      });
    }
    return out;
  }

  /**
   * Writes one image tarball (`oci`, or `docker` of one platform): an OCI index over several
   * platforms' images or over an image and its attestations, else the one manifest.
   */
  async exportImages(
    results: ImageResult[],
    spec: {
      type: 'oci' | 'docker';
      dest: string;
      indexAnnotations?: Record<string, string>;
    } & ImageOptions,
  ): Promise<void> {
    await exportImageTarballFile(
      this.store,
      await this.imagesOf(results, spec),
      spec.type,
      spec.names ?? [],
      spec.dest,
      spec.indexAnnotations,
    );
  }

  /**
   * Pushes the image of each result (an OCI index over them when there are several, or when
   * they have attestations) to a registry under every name (`push=true`).
   */
  async pushImages(
    results: ImageResult[],
    names: string[],
    credentials?: CredentialsProvider,
    indexAnnotations: Record<string, string> = {},
    o: Omit<ImageOptions, 'names'> = {},
  ): Promise<PushResult> {
    const images = await this.imagesOf(results, { ...o, names });
    return pushImages(this.registryFor(credentials), this.store, images, names, indexAnnotations);
  }

  /** Shows a result snapshot (or the empty tree) as a read-only directory for the duration of `fn`. */
  read<T>(snapshot: string | undefined, fn: (dir: string) => Promise<T>): Promise<T> {
    return readSnapshot(this.env, snapshot, fn);
  }
}
