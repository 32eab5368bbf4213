/**
 * The layers of a result: one OCI layer per snapshot of its chain (base first), each the
 * snapshot's changes against its parent, remembered by snapshot name (a snapshot is immutable, so
 * its layer never changes). Two steps, each done at most once per snapshot:
 * - its diffID ({@link LayerCache.diffIdOf}): the uncompressed tar hashed, nothing written. This is
 *   all a task's output needs (its result id is the chain of diffIDs);
 * - its blob ({@link LayerCache.layerOf}): the layer produced again, gzip-compressed, written to
 *   the blob store, and checked to have the diffID recorded first (the diff is deterministic).
 *   Only what needs the blob (an exporter, another worker, write-behind) pays for it.
 * Layers of pulled images are registered by the image source with their original blobs, so
 * exporting an image built on them reuses the registry's bytes.
 */
import { mkdir, readFile, writeFile, rename } from 'node:fs/promises';
import { dirname } from 'node:path';
import { KilnError, withCleanup } from '@kiln/protocol';
import type { BlobStore } from '@kiln/store';
import { diffLayer, writeLayer } from '@kiln/layers';
import type { LayerDescriptor } from '@kiln/layers';
import { coalesced } from '../cache/coalesced-write.js';
import { snapshotChain } from '../ops/snapshots.js';
import type { SnapshotEnv } from '../ops/snapshots.js';

export interface LayerRecord {
  digest: string;
  diffID: string;
  size: number;
  mediaType: string;
}

/** What is known of a snapshot's layer: always its diffID, its blob once written. */
type Known = LayerRecord | { diffID: string; digest?: undefined };

export class LayerCache {
  private readonly map = new Map<string, Known>();
  private readonly inflight = new Map<string, Promise<LayerRecord>>();
  private readonly hashing = new Map<string, Promise<string>>();
  /** Layers written with clamped file times, by `snapshot@epoch` (this process only). */
  private readonly rewritten = new Map<string, Promise<LayerRecord>>();

  private constructor(private readonly file: string) {}

  static async open(file: string): Promise<LayerCache> {
    const c = new LayerCache(file);
    try {
      const data = JSON.parse(await readFile(file, 'utf8')) as Record<string, Known>;
      for (const [k, v] of Object.entries(data)) c.map.set(k, v);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' && !(err instanceof SyntaxError))
        throw err;
    }
    return c;
  }

  /** The layer of a snapshot whose blob was written (or registered); undefined otherwise. */
  get(snapshot: string): LayerRecord | undefined {
    const k = this.map.get(snapshot);
    return k?.digest ? k : undefined;
  }

  /** Records a snapshot's layer with its blob. */
  set(snapshot: string, rec: LayerRecord): Promise<void> {
    return this.#save(snapshot, rec);
  }

  /** Forgets the layers of removed snapshots (garbage collection); resolves once on disk. */
  forget(snapshots: readonly string[]): Promise<void> {
    let changed = false;
    for (const s of snapshots) changed = this.map.delete(s) || changed;
    const gone = new Set(snapshots);
    for (const k of this.rewritten.keys())
      if (gone.has(k.slice(0, k.lastIndexOf('@')))) this.rewritten.delete(k);
    return changed ? this.#write() : Promise.resolve();
  }

  #save(snapshot: string, rec: Known): Promise<void> {
    this.map.set(snapshot, rec);
    return this.#write();
  }

  /** The whole map to its file, group-committed (concurrent saves share a write). */
  readonly #write = coalesced(async () => {
    const body = JSON.stringify(Object.fromEntries(this.map));
    await mkdir(dirname(this.file), { recursive: true });
    await writeFile(`${this.file}.tmp`, body);
    await rename(`${this.file}.tmp`, this.file);
  });

  /** The diffID of one snapshot's layer, computed at most once (no blob is written). */
  diffIdOf(env: SnapshotEnv, snapshot: string): Promise<string> {
    const known = this.map.get(snapshot);
    if (known) return Promise.resolve(known.diffID);
    let p = this.hashing.get(snapshot);
    if (!p) {
      p = (async () => {
        const handle = await env.snapshotter.diffSource(snapshot);
        const diffID = await withCleanup(
          async () => {
            const layer = diffLayer(handle.source, { compression: 'none' });
            layer.stream.resume();
            return (await layer.done).diffID;
          },
          () => handle.release(),
        );
        // A blob written meanwhile recorded the same diffID. Not awaited: the task's result
        // does not wait for the file (a diffID lost with it is computed again, the diff being
        // deterministic); a failed write is the next save's to retry.
        if (!this.map.get(snapshot)) this.#save(snapshot, { diffID }).catch(() => undefined);
        return diffID;
      })();
      p.finally(() => this.hashing.delete(snapshot)).catch(() => undefined);
      this.hashing.set(snapshot, p);
    }
    return p;
  }

  /** The diffIDs of a result snapshot's layers, base first. */
  async chainDiffIds(env: SnapshotEnv, snapshot: string | undefined): Promise<string[]> {
    if (snapshot === undefined) return [];
    const chain = await snapshotChain(env, snapshot);
    return Promise.all(chain.map((s) => this.diffIdOf(env, s)));
  }

  /** The layer of one snapshot with its blob in `store`, written at most once. */
  layerOf(env: SnapshotEnv, store: BlobStore, snapshot: string): Promise<LayerRecord> {
    const known = this.get(snapshot);
    if (known) return Promise.resolve(known);
    let p = this.inflight.get(snapshot);
    if (!p) {
      p = (async () => {
        const handle = await env.snapshotter.diffSource(snapshot);
        // The write's own error (the store's) is reported, not a failed release after it.
        const desc: LayerDescriptor = await withCleanup(
          () => writeLayer(store, handle.source, { compression: 'gzip' }),
          () => handle.release(),
        );
        const hashed = this.map.get(snapshot)?.diffID;
        if (hashed !== undefined && hashed !== desc.diffID) {
          // The result id already names the first diffID: a blob of other content must not
          // stand for it (the blob stays in the store, unreferenced, for GC).
          throw new KilnError(
            'LAYER_NOT_REPRODUCIBLE',
            `snapshot ${snapshot} diffs to ${desc.diffID}, not the ${hashed} its result names`,
            { details: { snapshot, expected: hashed, actual: desc.diffID } },
          );
        }
        const rec = {
          digest: desc.digest,
          diffID: desc.diffID,
          size: desc.size,
          mediaType: desc.mediaType,
        };
        await this.#save(snapshot, rec);
        return rec;
      })();
      p.finally(() => this.inflight.delete(snapshot)).catch(() => undefined);
      this.inflight.set(snapshot, p);
    }
    return p;
  }

  /** The layers of a result snapshot, base first, with their blobs in `store`. */
  async chainLayers(
    env: SnapshotEnv,
    store: BlobStore,
    snapshot: string | undefined,
  ): Promise<LayerRecord[]> {
    if (snapshot === undefined) return [];
    const chain = await snapshotChain(env, snapshot);
    return Promise.all(chain.map((s) => this.layerOf(env, store, s)));
  }

  /**
   * As {@link LayerCache.chainLayers}, but every layer past the base image's (the leading layers
   * whose diffIDs are `base`'s, kept as pulled) is written again with file times later than
   * `epoch` clamped to it (BuildKit's `rewrite-timestamp=true`): the same files give the same
   * blob on every worker, whenever they were made.
   */
  async chainLayersAt(
    env: SnapshotEnv,
    store: BlobStore,
    snapshot: string | undefined,
    epoch: number,
    base: readonly string[],
  ): Promise<LayerRecord[]> {
    if (snapshot === undefined) return [];
    const chain = await snapshotChain(env, snapshot);
    const ids = await Promise.all(chain.map((s) => this.diffIdOf(env, s)));
    let keep = 0;
    while (keep < chain.length && keep < base.length && ids[keep] === base[keep]) keep++;
    return Promise.all(
      chain.map((s, i) =>
        i < keep ? this.layerOf(env, store, s) : this.#clampedLayerOf(env, store, s, epoch),
      ),
    );
  }

  #clampedLayerOf(
    env: SnapshotEnv,
    store: BlobStore,
    snapshot: string,
    epoch: number,
  ): Promise<LayerRecord> {
    const key = `${snapshot}@${epoch}`;
    let p = this.rewritten.get(key);
    if (!p) {
      p = (async () => {
        const handle = await env.snapshotter.diffSource(snapshot);
        const desc = await withCleanup(
          () => writeLayer(store, handle.source, { compression: 'gzip', sourceDateEpoch: epoch }),
          () => handle.release(),
        );
        return {
          digest: desc.digest,
          diffID: desc.diffID,
          size: desc.size,
          mediaType: desc.mediaType,
        };
      })();
      // A failure is not remembered: the next export tries again.
      p.catch(() => this.rewritten.delete(key));
      this.rewritten.set(key, p);
    }
    return p;
  }
}
