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
 *
 * The uncompressed tar the diffID was hashed from is kept (a tar of at most
 * {@link KEEP_TAR_BYTES}, at most {@link KEEP_TOTAL_BYTES} of them, oldest dropped first, in this
 * process only) until the blob is made: the blob then only compresses it, where it would walk,
 * read and encode the snapshot again (issue 9: the export of a 5,000-file COPY's layer). A small
 * tar (at most the compress-ahead size, {@link KEEP_MEMORY_BYTES} of them in all) is kept in
 * memory: writing it to a file cost a task ~3 ms before its diffID (an open, writes and a close
 * through the thread pool), and it is compressed right after anyway. A larger one goes to a file.
 * A kept tar that is gone or not the diffID's bytes is never used: the layer is produced again.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { access, mkdir, open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { dirname, join } from 'node:path';
import { KilnError, withCleanup } from '@kiln/protocol';
import type { BlobStore } from '@kiln/store';
import { diffLayer, layerOfTar, putLayer, writeLayer } from '@kiln/layers';
import type { LayerDescriptor } from '@kiln/layers';
import { KvFile } from '../cache/kv-file.js';
import { snapshotChain } from '../ops/snapshots.js';
import type { SnapshotEnv } from '../ops/snapshots.js';

export interface LayerRecord {
  digest: string;
  diffID: string;
  size: number;
  mediaType: string;
}

/** The largest uncompressed layer tar kept for its blob, and all of them together. */
export const KEEP_TAR_BYTES = 64 << 20;
export const KEEP_TOTAL_BYTES = 256 << 20;
/** Kept tars up to this size are compressed into their blob as soon as they are kept. */
export const COMPRESS_AHEAD_BYTES = 4 << 20;
/** Kept tars held in memory (each at most the compress-ahead size), all together. */
export const KEEP_MEMORY_BYTES = 16 << 20;

/** The bounds of kept tars (see {@link LayerCache.open}). */
export interface KeepBounds {
  /** The largest tar kept. */
  tar: number;
  /** All kept tars together. */
  total: number;
  /** Kept tars up to this size are compressed ahead; default {@link COMPRESS_AHEAD_BYTES}. */
  ahead?: number;
  /**
   * Kept tars up to the compress-ahead size are held in memory, this many bytes of them in all
   * (the others in files); default {@link KEEP_MEMORY_BYTES}, 0: every kept tar in a file.
   */
  memory?: number;
}

/** A tar read whole: in memory, or in its file; undefined when it is not kept. */
type Collected = { size: number; data?: Buffer } | undefined;

/**
 * Reads `stream` to its end and keeps it whole when it is at most `max` bytes: in memory while it
 * stays within `memMax` bytes (no file is written: the caller holds the bytes), else in the file
 * `path`. Undefined when it is not kept (too large, or the file cannot be written: the file is
 * then removed, and the stream is still read: keeping a tar never fails the diff).
 */
async function collectTar(
  stream: Readable,
  path: string,
  max: number,
  memMax: number,
): Promise<Collected> {
  let parts: Buffer[] | undefined = [];
  let fh: FileHandle | undefined;
  let failed = false;
  const drop = async (): Promise<void> => {
    failed = true;
    parts = undefined;
    const f = fh;
    fh = undefined;
    await f?.close().catch(() => undefined);
    await rm(path, { force: true }).catch(() => undefined);
  };
  let size = 0;
  try {
    for await (const chunk of stream) {
      const b = chunk as Buffer;
      size += b.length;
      if (failed) continue;
      if (size > max) {
        await drop();
        continue;
      }
      if (parts !== undefined && size <= memMax) {
        parts.push(b);
        continue;
      }
      // Past the memory bound: the file from here on (what was held first).
      if (fh === undefined) {
        fh = await open(path, 'w', 0o600).catch(() => undefined);
        if (fh === undefined) {
          await drop();
          continue;
        }
        for (const p of parts ?? []) await fh.write(p).catch(drop);
        parts = undefined;
      }
      if (fh !== undefined) await fh.write(b).catch(drop);
    }
    if (failed) return undefined;
    if (parts !== undefined) return { size, data: Buffer.concat(parts, size) };
    const f = fh!;
    fh = undefined;
    return await f.close().then(
      () => ({ size }),
      () => rm(path, { force: true }).then(() => undefined),
    );
  } finally {
    if (fh !== undefined) await drop();
  }
}

/** What is known of a snapshot's layer: always its diffID, its blob once written. */
type Known = LayerRecord | { diffID: string; digest?: undefined };

export class LayerCache {
  private readonly map = new Map<string, Known>();
  private readonly inflight = new Map<string, Promise<LayerRecord>>();
  private readonly hashing = new Map<string, Promise<string>>();
  /** Layers written with clamped file times, by `snapshot@epoch` (this process only). */
  private readonly rewritten = new Map<string, Promise<LayerRecord>>();

  /** Kept uncompressed tars by snapshot (bytes, or a file), oldest first, and their sizes. */
  private readonly kept = new Map<string, { path: string; size: number; data?: Buffer }>();
  private keptBytes = 0;
  private keptInMemory = 0;
  private readonly tarDir: string;
  /** The blobs made ahead ({@link LayerCache.compressAhead}), one after the other. */
  #ahead: Promise<void> = Promise.resolve();

  private constructor(
    private readonly kv: KvFile,
    file: string,
    private readonly keep: KeepBounds,
  ) {
    this.tarDir = join(dirname(file), 'layer-tars');
  }

  /**
   * `file`: where the records persist, a log of JSON lines (see KvFile: a diffID or a blob costs
   * one appended line, never a rewrite of every snapshot's entry); kept tars go in `layer-tars`
   * beside it (what a previous process left there is removed). `keep`: the bounds of the kept
   * tars (0: none kept). `legacy`: a whole-map JSON file of earlier versions (rewritten at every
   * change), taken over once and removed.
   */
  static async open(
    file: string,
    keep: KeepBounds = { tar: KEEP_TAR_BYTES, total: KEEP_TOTAL_BYTES },
    legacy?: string,
  ): Promise<LayerCache> {
    await mkdir(dirname(file), { recursive: true });
    if (legacy !== undefined) await migrate(legacy, file);
    const c = new LayerCache(await KvFile.open(file), file, keep);
    await rm(c.tarDir, { recursive: true, force: true });
    for (const k of c.kv.keys()) {
      try {
        c.map.set(k, JSON.parse(c.kv.get(k)!) as Known);
      } catch (err) {
        if (!(err instanceof SyntaxError)) throw err;
      }
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
  async forget(snapshots: readonly string[]): Promise<void> {
    const deletes: Promise<void>[] = [];
    for (const s of snapshots) if (this.map.delete(s)) deletes.push(this.kv.delete(s));
    for (const s of snapshots) void this.#dropTar(s);
    const gone = new Set(snapshots);
    for (const k of this.rewritten.keys())
      if (gone.has(k.slice(0, k.lastIndexOf('@')))) this.rewritten.delete(k);
    await Promise.all(deletes);
    await this.kv.compact();
  }

  #save(snapshot: string, rec: Known): Promise<void> {
    this.map.set(snapshot, rec);
    return this.kv.set(snapshot, JSON.stringify(rec));
  }

  /** The diffID of one snapshot's layer, computed at most once (no blob is written). */
  diffIdOf(env: SnapshotEnv, snapshot: string): Promise<string> {
    const known = this.map.get(snapshot);
    if (known) return Promise.resolve(known.diffID);
    let p = this.hashing.get(snapshot);
    if (!p) {
      p = (async () => {
        const handle = await env.snapshotter.diffSource(snapshot);
        const path = join(
          this.tarDir,
          `${createHash('sha256').update(snapshot).digest('hex')}.tar`,
        );
        const keep = this.keep.tar > 0 && this.keep.total > 0;
        const [diffID, whole] = await withCleanup(
          async () => {
            const layer = diffLayer(handle.source, { compression: 'none' });
            let kept: Promise<Collected> = Promise.resolve(undefined);
            if (keep) {
              const max = Math.min(this.keep.tar, this.keep.total);
              const memMax = Math.min(
                this.keep.ahead ?? COMPRESS_AHEAD_BYTES,
                this.#memoryBound - this.keptInMemory,
              );
              if (memMax < max) await mkdir(this.tarDir, { recursive: true });
              kept = collectTar(layer.stream, path, max, memMax);
            } else {
              layer.stream.resume();
            }
            // Both settle: a failed diff fails the stream, and the file is then removed.
            const [desc, tar] = await Promise.all([layer.done, kept]);
            return [desc.diffID, tar?.size === desc.uncompressedSize ? tar : undefined] as const;
          },
          () => handle.release(),
        );
        if (whole !== undefined) await this.#keepTar(snapshot, path, whole);
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

  /**
   * Makes the blob of `snapshot`'s layer in the background when its tar is kept and at most
   * `keep.ahead` bytes (default COMPRESS_AHEAD_BYTES): a small layer costs little to compress
   * while the build's next steps run (zlib works in the thread pool, on another core), and an
   * export at the build's end then finds it made instead of compressing every new layer then.
   * One at a time. Returns when it is made, or undefined when it is not made ahead; a failure is
   * ignored (the layer is made again when asked for).
   */
  /** Resolves once the blobs asked for ahead so far are made (or failed). */
  settled(): Promise<void> {
    return this.#ahead;
  }

  compressAhead(env: SnapshotEnv, store: BlobStore, snapshot: string): Promise<void> | undefined {
    const k = this.kept.get(snapshot);
    const max = this.keep.ahead ?? COMPRESS_AHEAD_BYTES;
    if (k === undefined || k.size > max || this.inflight.has(snapshot)) return undefined;
    this.#ahead = this.#ahead.then(() =>
      this.layerOf(env, store, snapshot).then(
        () => undefined,
        () => undefined,
      ),
    );
    return this.#ahead;
  }

  /** The layer of one snapshot with its blob in `store`, written at most once. */
  layerOf(env: SnapshotEnv, store: BlobStore, snapshot: string): Promise<LayerRecord> {
    const known = this.get(snapshot);
    if (known) return Promise.resolve(known);
    let p = this.inflight.get(snapshot);
    if (!p) {
      p = (async () => {
        const hashed = this.map.get(snapshot)?.diffID;
        const desc =
          (hashed && (await this.#fromKeptTar(store, snapshot, hashed))) ||
          (await this.#remake(env, store, snapshot));
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

  /** The layer made again from the snapshot, written to `store`. */
  async #remake(env: SnapshotEnv, store: BlobStore, snapshot: string): Promise<LayerDescriptor> {
    const handle = await env.snapshotter.diffSource(snapshot);
    // The write's own error (the store's) is reported, not a failed release after it.
    return withCleanup(
      () => writeLayer(store, handle.source, { compression: 'gzip' }),
      () => handle.release(),
    );
  }

  /**
   * The layer compressed from the tar kept for `snapshot`, when one is kept, readable and has the
   * diffID `hashed` (else undefined: the caller makes it again; a blob of other bytes may be left
   * in the store, unreferenced, for GC). The tar is removed either way.
   */
  async #fromKeptTar(
    store: BlobStore,
    snapshot: string,
    hashed: string,
  ): Promise<LayerDescriptor | undefined> {
    const k = this.kept.get(snapshot);
    if (k === undefined) return undefined;
    this.kept.delete(snapshot);
    this.keptBytes -= k.size;
    if (k.data !== undefined) this.keptInMemory -= k.size;
    try {
      const tar = k.data !== undefined ? Readable.from([k.data]) : createReadStream(k.path);
      const desc = await putLayer(store, layerOfTar(tar, { compression: 'gzip' }));
      return desc.diffID === hashed && desc.uncompressedSize === k.size ? desc : undefined;
    } catch {
      return undefined;
    } finally {
      if (k.data === undefined) await rm(k.path, { force: true });
    }
  }

  /** Records a kept tar; resolves once the tars it pushed past the total bound are removed. */
  async #keepTar(
    snapshot: string,
    path: string,
    tar: { size: number; data?: Buffer },
  ): Promise<void> {
    const dropped = [this.#dropTar(snapshot)];
    // Diffs running at once each found room in memory: the bound holds all the same.
    if (tar.data !== undefined && this.keptInMemory + tar.size > this.#memoryBound) return;
    this.kept.set(snapshot, { path, ...tar });
    this.keptBytes += tar.size;
    if (tar.data !== undefined) this.keptInMemory += tar.size;
    for (const [s] of this.kept) {
      if (this.keptBytes <= this.keep.total) break;
      dropped.push(this.#dropTar(s));
    }
    await Promise.all(dropped);
  }

  /** Forgets the tar kept for `snapshot`; resolves once it is removed (a failure leaves a file). */
  #dropTar(snapshot: string): Promise<void> {
    const k = this.kept.get(snapshot);
    if (k === undefined) return Promise.resolve();
    this.kept.delete(snapshot);
    this.keptBytes -= k.size;
    if (k.data !== undefined) {
      this.keptInMemory -= k.size;
      return Promise.resolve();
    }
    return rm(k.path, { force: true }).catch(() => undefined);
  }

  get #memoryBound(): number {
    return this.keep.memory ?? KEEP_MEMORY_BYTES;
  }

  /** Kept tars (tests), and how many of them are in memory. */
  keptTars(): number {
    return this.kept.size;
  }

  keptInMemoryTars(): number {
    return [...this.kept.values()].filter((k) => k.data !== undefined).length;
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

/** Moves the entries of a whole-map JSON file into a new log file (once), then removes it. */
async function migrate(legacy: string, file: string): Promise<void> {
  let text: string;
  try {
    text = await readFile(legacy, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  const exists = await access(file).then(
    () => true,
    () => false,
  );
  if (!exists) {
    let data: Record<string, Known> = {};
    try {
      data = JSON.parse(text) as Record<string, Known>;
    } catch (err) {
      // A torn file of an earlier version: its diffIDs are computed again when needed.
      if (!(err instanceof SyntaxError)) throw err;
    }
    const lines = Object.entries(data).map(
      ([k, v]) => `${JSON.stringify([k, JSON.stringify(v)])}\n`,
    );
    await writeFile(`${file}.tmp`, lines.join(''));
    await rename(`${file}.tmp`, file);
  }
  await rm(legacy, { force: true });
}
