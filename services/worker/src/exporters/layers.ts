/**
 * The layers of a result: one OCI layer per snapshot of its chain (base first), each the
 * snapshot's changes against its parent, written to the blob store once and remembered by
 * snapshot name (a snapshot is immutable, so its layer never changes). Layers of pulled images are
 * registered by the image source with their original blobs, so exporting an image built on them
 * reuses the registry's bytes.
 */
import { mkdir, readFile, writeFile, rename } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { BlobStore } from '@kiln/store';
import { writeLayer } from '@kiln/layers';
import type { LayerDescriptor } from '@kiln/layers';
import { snapshotChain } from '../ops/snapshots.js';
import type { SnapshotEnv } from '../ops/snapshots.js';

export interface LayerRecord {
  digest: string;
  diffID: string;
  size: number;
  mediaType: string;
}

export class LayerCache {
  private readonly map = new Map<string, LayerRecord>();
  private readonly inflight = new Map<string, Promise<LayerRecord>>();
  private saving: Promise<void> = Promise.resolve();

  private constructor(private readonly file: string) {}

  static async open(file: string): Promise<LayerCache> {
    const c = new LayerCache(file);
    try {
      const data = JSON.parse(await readFile(file, 'utf8')) as Record<string, LayerRecord>;
      for (const [k, v] of Object.entries(data)) c.map.set(k, v);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' && !(err instanceof SyntaxError))
        throw err;
    }
    return c;
  }

  get(snapshot: string): LayerRecord | undefined {
    return this.map.get(snapshot);
  }

  async set(snapshot: string, rec: LayerRecord): Promise<void> {
    this.map.set(snapshot, rec);
    const body = JSON.stringify(Object.fromEntries(this.map));
    this.saving = this.saving.then(async () => {
      await mkdir(dirname(this.file), { recursive: true });
      await writeFile(`${this.file}.tmp`, body);
      await rename(`${this.file}.tmp`, this.file);
    });
    await this.saving;
  }

  /** The layer of one snapshot, computed (and stored) at most once. */
  layerOf(env: SnapshotEnv, store: BlobStore, snapshot: string): Promise<LayerRecord> {
    const known = this.map.get(snapshot);
    if (known) return Promise.resolve(known);
    let p = this.inflight.get(snapshot);
    if (!p) {
      p = (async () => {
        const handle = await env.snapshotter.diffSource(snapshot);
        let desc: LayerDescriptor;
        try {
          desc = await writeLayer(store, handle.source, { compression: 'gzip' });
        } finally {
          await handle.release();
        }
        const rec = {
          digest: desc.digest,
          diffID: desc.diffID,
          size: desc.size,
          mediaType: desc.mediaType,
        };
        await this.set(snapshot, rec);
        return rec;
      })();
      p.finally(() => this.inflight.delete(snapshot)).catch(() => undefined);
      this.inflight.set(snapshot, p);
    }
    return p;
  }

  /** The layers of a result snapshot, base first. */
  async chainLayers(
    env: SnapshotEnv,
    store: BlobStore,
    snapshot: string | undefined,
  ): Promise<LayerRecord[]> {
    if (snapshot === undefined) return [];
    const chain = await snapshotChain(env, snapshot);
    return Promise.all(chain.map((s) => this.layerOf(env, store, s)));
  }
}
