/**
 * Incremental local contexts: the worker's copy of each client directory it was sent, kept as a
 * committed snapshot under the context's key (the client's session shared key, the op's
 * `local.sharedkeyhint` and its patterns: BuildKit's shared key of a local source), so that the
 * next sync of the same context applies only the difference.
 *
 * Contract:
 * - `snapshot(manifest, key)` gives the committed snapshot of a synced manifest (a blob in the
 *   store, `@kiln/bus` LocalManifest):
 *   - a snapshot already made from the same manifest blob (same paths, modes, owners, mtimes,
 *     contents) is returned as is: no file is written, nothing is snapshotted or layered again;
 *   - else, when the key's previous snapshot still exists and its chain is short, a new snapshot is
 *     made on top of it holding only the difference (new, changed and removed entries);
 *   - else the tree is written in full into a fresh snapshot.
 * - The manifest blob each snapshot was made from is persisted beside it (`local-contexts.jsonl`),
 *   so the content digests of its files are known without reading them
 *   ({@link LocalContexts.fileDigests}): content checksums of a context use them.
 * - Calls for one key are serialised; different keys run in parallel. At most `maxKeys` keys (and
 *   `maxKeys` x 9 snapshots) are remembered, least recently used going first; a forgotten one only
 *   costs a full write next time. The records file is append-only (`KvFile`), as the worker's
 *   other records.
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type { LocalManifest, ManifestEntry } from '@kiln/bus';
import { decodeSessionJson } from '@kiln/bus';
import type { BlobStore, Digest } from '@kiln/store';
import { buildSnapshot } from '../../ops/snapshots.js';
import type { SnapshotEnv } from '../../ops/snapshots.js';
import { KvFile } from '../../cache/kv-file.js';
import type { LocalSpec } from './local-source.js';
import { applyManifestDiff, validateManifest, writeManifestTree } from './manifest-tree.js';

/** Snapshots stacked on one full write before the next full write (bounds the overlay depth). */
const MAX_DEPTH = 8;
const MAX_KEYS = 256;
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;

/** What is kept of each snapshot made here. */
interface SnapshotRecord {
  /** The manifest blob the snapshot was made from. */
  manifest: string;
  /** Snapshots of this context below this one (0: written in full). */
  depth: number;
}

/** How a snapshot was had. */
export type ContextOutcome = 'reused' | 'diff' | 'full';

export interface ContextSnapshot {
  snapshot: string;
  outcome: ContextOutcome;
}

/** The key a context's previous copy is kept under. */
export function contextKey(sharedKey: string, spec: LocalSpec): string {
  return createHash('sha256')
    .update(
      JSON.stringify([
        sharedKey,
        spec.name,
        spec.sharedKeyHint ?? '',
        spec.includePatterns,
        spec.excludePatterns,
        spec.followPaths,
      ]),
    )
    .digest('hex');
}

export class LocalContexts {
  readonly #locks = new Map<string, Promise<unknown>>();
  /** The last manifests read, by digest (a sync and the checksum that follows share one). */
  readonly #manifests = new Map<string, Promise<LocalManifest>>();

  private constructor(
    private readonly env: SnapshotEnv,
    private readonly store: BlobStore,
    /** `k:<key>` -> snapshot; `s:<snapshot>` -> SnapshotRecord JSON; `m:<manifest>` -> snapshot. */
    private readonly kv: KvFile,
    private readonly maxKeys: number,
  ) {}

  static async open(o: {
    stateDir: string;
    env: SnapshotEnv;
    store: BlobStore;
    maxKeys?: number;
  }): Promise<LocalContexts> {
    const kv = await KvFile.open(join(o.stateDir, 'local-contexts.jsonl'));
    return new LocalContexts(o.env, o.store, kv, o.maxKeys ?? MAX_KEYS);
  }

  /**
   * The manifest of the last snapshot made here for a context of this spec (any client): sent as
   * the sync's base, so that the files packed in it are not asked for again.
   */
  base(spec: LocalSpec): string | undefined {
    return this.kv.get(`b:${contextKey('', spec)}`);
  }

  /** The committed snapshot of the tree `manifest` lists (see the module contract). */
  snapshot(manifest: string, key: string | undefined, spec?: LocalSpec): Promise<ContextSnapshot> {
    const lock = key ?? `manifest:${manifest}`;
    const prev = this.#locks.get(lock) ?? Promise.resolve();
    const p = prev.then(
      () => this.#snapshot(manifest, key),
      () => this.#snapshot(manifest, key),
    );
    if (spec) {
      const b = `b:${contextKey('', spec)}`;
      void p.then(
        () => this.kv.set(b, manifest).then(() => this.#trim('b:')),
        () => undefined,
      );
    }
    this.#locks.set(lock, p);
    void p
      .finally(() => {
        if (this.#locks.get(lock) === p) this.#locks.delete(lock);
      })
      .catch(() => undefined);
    return p;
  }

  /**
   * Content digests (`sha256:<hex>`) and sizes of the regular files of a snapshot made here, by
   * path relative to its root with a leading `/`; undefined for any other snapshot.
   */
  async fileDigests(
    snapshot: string,
  ): Promise<ReadonlyMap<string, { size: number; digest: string }> | undefined> {
    const rec = this.#snapshotRecord(snapshot);
    if (rec === undefined) return undefined;
    let m: LocalManifest;
    try {
      m = await this.#manifest(rec.manifest);
    } catch {
      return undefined; // the blob is gone: the caller reads the files
    }
    const out = new Map<string, { size: number; digest: string }>();
    for (const e of m.entries)
      if ((e.mode & S_IFMT) === S_IFREG && e.digest)
        out.set(`/${e.path}`, { size: e.size, digest: e.digest });
    return out;
  }

  /**
   * The manifest a snapshot made here was written from (its tree, entry by entry); undefined when
   * not made here or its blob is gone.
   */
  async manifestEntries(snapshot: string): Promise<readonly ManifestEntry[] | undefined> {
    const rec = this.#snapshotRecord(snapshot);
    if (rec === undefined) return undefined;
    return this.#manifest(rec.manifest).then(
      (m) => m.entries,
      () => undefined,
    );
  }

  async #exists(snapshot: string): Promise<boolean> {
    return this.env.snapshotter.stat(snapshot).then(
      () => true,
      () => false,
    );
  }

  #manifest(digest: string): Promise<LocalManifest> {
    let p = this.#manifests.get(digest);
    if (!p) {
      p = (async () => {
        const chunks: Buffer[] = [];
        for await (const c of await this.store.get(digest as Digest)) chunks.push(c as Buffer);
        const m = decodeSessionJson<LocalManifest>(Buffer.concat(chunks));
        validateManifest(m);
        return m;
      })();
      p.catch(() => this.#manifests.delete(digest));
      this.#manifests.set(digest, p);
      // Two are enough: the previous and the current manifest of a diff.
      while (this.#manifests.size > 2) this.#manifests.delete(this.#manifests.keys().next().value!);
    }
    return p;
  }

  async #snapshot(manifest: string, key: string | undefined): Promise<ContextSnapshot> {
    const prevName = key ? this.kv.get(`k:${key}`) : undefined;
    const prev = prevName === undefined ? undefined : this.#snapshotRecord(prevName);
    // The same manifest blob: the same tree, already made.
    const same = prev?.manifest === manifest ? prevName : this.kv.get(`m:${manifest}`);
    if (same !== undefined && (await this.#exists(same))) {
      if (key) await this.#remember(key, same);
      return { snapshot: same, outcome: 'reused' };
    }
    const next = await this.#manifest(manifest);
    let made: { snapshot: string; depth: number; outcome: ContextOutcome } | undefined;
    if (prevName && prev && prev.depth < MAX_DEPTH && (await this.#exists(prevName))) {
      const old = await this.#manifest(prev.manifest).catch(() => undefined);
      if (old) {
        const snapshot = await buildSnapshot(this.env, prevName, async (dir) => {
          await applyManifestDiff(this.store, old, next, dir);
        });
        made = { snapshot, depth: prev.depth + 1, outcome: 'diff' };
      }
    }
    made ??= {
      snapshot: await buildSnapshot(this.env, undefined, (dir) =>
        writeManifestTree(this.store, next, dir),
      ),
      depth: 0,
      outcome: 'full',
    };
    const rec: SnapshotRecord = { manifest, depth: made.depth };
    await this.kv.set(`s:${made.snapshot}`, JSON.stringify(rec));
    await this.kv.set(`m:${manifest}`, made.snapshot);
    // A forgotten snapshot only costs a full write (and its files read for checksums).
    await this.#trim('s:', this.maxKeys * (MAX_DEPTH + 1));
    await this.#trim('m:', this.maxKeys * (MAX_DEPTH + 1));
    if (key) await this.#remember(key, made.snapshot);
    return { snapshot: made.snapshot, outcome: made.outcome };
  }

  #snapshotRecord(snapshot: string): SnapshotRecord | undefined {
    const v = this.kv.get(`s:${snapshot}`);
    if (v === undefined) return undefined;
    try {
      return JSON.parse(v) as SnapshotRecord;
    } catch {
      return undefined;
    }
  }

  async #remember(key: string, snapshot: string): Promise<void> {
    await this.kv.set(`k:${key}`, snapshot);
    await this.#trim('k:');
  }

  async #trim(prefix: string, max = this.maxKeys): Promise<void> {
    const keys = this.kv.keys().filter((k) => k.startsWith(prefix));
    for (const k of keys.slice(0, Math.max(0, keys.length - max))) await this.kv.delete(k);
  }
}
