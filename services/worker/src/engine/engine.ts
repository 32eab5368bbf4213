/**
 * The worker engine: everything one machine needs to solve LLB graphs (BuildKit's OCI worker).
 * It owns, under one state dir: the content store (`content/`), snapshots (`snapshots/`), the OCI
 * runtime's bundles and cache mounts (`exec/`), the local cache index (`cache-index.jsonl`) and
 * scratch space (`tmp/`). Executors are plugged in by op kind; the local solver drives them.
 */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { LoadedDefinition } from '@kiln/llb';
import { FsBlobStore } from '@kiln/store';
import type { BlobStore } from '@kiln/store';
import { depChecksum } from '../cache/dep-checksum.js';
import { DiffExecutor, MergeExecutor } from '../ops/merge-diff/merge-diff.js';
import { readSnapshot } from '../ops/snapshots.js';
import type { SnapshotEnv } from '../ops/snapshots.js';
import { RegistryClient } from '@kiln/registry';
import type { RegistryClientOptions } from '@kiln/registry';
import { OciRuntime } from '../runtime/index.js';
import type { RuntimeName } from '../runtime/index.js';
import { openSnapshotter } from '../snapshot/index.js';
import type { Snapshotter } from '../snapshot/index.js';
import { ImageMetadataResolver, ImageSource } from '../sources/image/index.js';
import { CacheIndex } from '../solver/cache-index.js';
import { KvFile } from '../solver/kv-file.js';
import { LocalSolver } from '../solver/solver.js';
import type { SolveOptions, SolveResult } from '../solver/solver.js';
import {
  buildImage,
  exportImageTarballFile,
  exportLocal,
  exportTarFile,
} from '../exporters/export.js';
import type { BuiltImage } from '../exporters/export.js';
import { LayerCache } from '../exporters/layers.js';
import { pushImages } from '../exporters/push.js';
import type { PushResult } from '../exporters/push.js';
import { ExecExecutor } from './executors/exec.js';
import { FileExecutor } from './executors/file.js';
import { SourceExecutor } from './executors/source.js';

export interface EngineOptions {
  /** Everything the engine keeps lives here. */
  stateDir: string;
  snapshotter?: 'auto' | 'overlayfs' | 'native';
  runtime?: RuntimeName | 'auto';
  registry?: RegistryClientOptions;
  /** The content store; default a filesystem store under `<stateDir>/content`. */
  store?: BlobStore;
  /** Execs run at once; default the number of CPUs. */
  parallelism?: number;
}

/** Where a result goes (BuildKit's `--output`). */
export type ExportSpec =
  | { type: 'local'; dest: string }
  | { type: 'tar'; dest: string }
  | { type: 'oci' | 'docker'; dest: string; config: Record<string, unknown>; names?: string[] };

export class Engine {
  private constructor(
    readonly stateDir: string,
    readonly store: BlobStore,
    readonly snapshotter: Snapshotter,
    /** The OCI runtime, opened (and probed) on first use: a fully cached build never needs it. */
    readonly runtime: () => Promise<OciRuntime>,
    readonly images: ImageSource,
    readonly metadata: ImageMetadataResolver,
    private readonly solver: LocalSolver,
    private readonly env: SnapshotEnv,
    readonly layers: LayerCache,
    readonly registry: RegistryClient,
  ) {}

  static async open(o: EngineOptions): Promise<Engine> {
    const tmpDir = join(o.stateDir, 'tmp');
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
      });
      // A failed open is retried by the next exec rather than remembered.
      opening.catch(() => (opening = undefined));
      return opening;
    };
    const client = new RegistryClient(o.registry ?? {});
    const images = new ImageSource({ client, store });
    const metadata = new ImageMetadataResolver(images);
    const env: SnapshotEnv = { snapshotter, tmpDir };
    const index = await CacheIndex.open(join(o.stateDir, 'cache-index.jsonl'));
    const layers = await LayerCache.open(join(o.stateDir, 'layers.json'));
    const checksumMemo = await KvFile.open(join(o.stateDir, 'checksums.jsonl'));
    const solver = new LocalSolver({
      executors: {
        source: new SourceExecutor(env, images, store, layers),
        exec: new ExecExecutor({ snapshotter, runtime, stateDir: join(o.stateDir, 'exec') }),
        file: new FileExecutor(env),
        merge: new MergeExecutor(env, { layers, store }),
        diff: new DiffExecutor(env, layers, store),
      },
      index,
      checksumMemo,
      read: (snap, fn) => readSnapshot(env, snap, fn),
      checksum: depChecksum,
      exists: (s) =>
        snapshotter.stat(s).then(
          () => true,
          () => false,
        ),
      ...(o.parallelism !== undefined ? { parallelism: o.parallelism } : {}),
    });
    return new Engine(
      o.stateDir,
      store,
      snapshotter,
      runtime,
      images,
      metadata,
      solver,
      env,
      layers,
      client,
    );
  }

  /** Solves a marshaled Definition (or a loaded one) on this machine. */
  solve(definition: Uint8Array | LoadedDefinition, opts: SolveOptions = {}): Promise<SolveResult> {
    return this.solver.solve(definition, opts);
  }

  /** The image (config, manifest, layers in the store) whose filesystem is `snapshot`. */
  buildImage(snapshot: string | undefined, config: Record<string, unknown>): Promise<BuiltImage> {
    return buildImage(this.env, this.store, this.layers, snapshot, { config });
  }

  /** Writes a result where `spec` says. */
  async export(snapshot: string | undefined, spec: ExportSpec): Promise<void> {
    switch (spec.type) {
      case 'local':
        return exportLocal(this.env, snapshot, spec.dest);
      case 'tar':
        return exportTarFile(this.env, snapshot, spec.dest);
      case 'oci':
      case 'docker': {
        const img = await this.buildImage(snapshot, spec.config);
        return exportImageTarballFile(
          this.store,
          { image: img },
          spec.type,
          spec.names ?? [],
          spec.dest,
        );
      }
    }
  }

  /**
   * Writes one image tarball holding several platforms' images (an OCI index over their
   * manifests), as a multi-platform `--output type=oci` does.
   */
  async exportMultiPlatform(
    results: {
      snapshot: string | undefined;
      config: Record<string, unknown>;
      platform: { os: string; architecture: string; variant?: string };
    }[],
    spec: { type: 'oci' | 'docker'; dest: string; names?: string[] },
  ): Promise<void> {
    const images = [];
    for (const r of results)
      images.push({ image: await this.buildImage(r.snapshot, r.config), platform: r.platform });
    await exportImageTarballFile(this.store, images, spec.type, spec.names ?? [], spec.dest);
  }

  /**
   * Pushes the image of each result (an OCI index over them when there are several) to a
   * registry under every name (`push=true`).
   */
  async pushImages(
    results: {
      snapshot: string | undefined;
      config: Record<string, unknown>;
      platform: { os: string; architecture: string; variant?: string };
    }[],
    names: string[],
  ): Promise<PushResult> {
    const images = [];
    for (const r of results)
      images.push({ image: await this.buildImage(r.snapshot, r.config), platform: r.platform });
    return pushImages(this.registry, this.store, images, names);
  }

  /** Shows a result snapshot (or the empty tree) as a read-only directory for the duration of `fn`. */
  read<T>(snapshot: string | undefined, fn: (dir: string) => Promise<T>): Promise<T> {
    return readSnapshot(this.env, snapshot, fn);
  }
}
