/**
 * Syncing a client's local directory into the content store, for workers to read (`@kiln/bus`
 * session.ts, `kiln.session.<sid>.local`).
 *
 * Contract:
 * - The client streams the directory's manifest (filtered by the op's patterns); only the files
 *   the store lacks then cross the wire. A large file is put as its own blob (by its digest); small
 *   files are asked for many at a time and put many to a blob (a pack: their bytes back to back,
 *   the manifest entry naming `pack` and `offset`), so a context of many small files costs a few
 *   store writes rather than one per file.
 * - Every file's bytes are checked against its manifest digest (and size) before its blob (or
 *   pack) becomes visible; a mismatch (the file changed during the sync) fails the sync and
 *   stores nothing that the manifest names. The manifest is put last.
 * - Packed files are reused by content digest from the asker's base manifest (the worker's last
 *   copy of the context, `LocalSyncRequest.base`) and from the last manifest of each context
 *   (client shared key + directory + patterns) this scheduler synced (in memory, the last
 *   {@link CONTEXTS}): unchanged small files do not cross the wire again.
 * - An unchanged listing does not cross the wire either: the client's digest of the last listing
 *   of a context synced here is sent with the request, and a client whose listing has that digest
 *   answers `unchanged`; the last sync's manifest is then the answer, once every blob it names is
 *   still in the store (touched, as a sync touches what it reuses; else the listing is asked for
 *   in full). The context's key then also holds the session's tenant: a client is never told the
 *   digest of another tenant's listing.
 */
import { createHash } from 'node:crypto';
import { PassThrough, Transform, pipeline } from 'node:stream';
import type { LocalManifest, LocalSyncRequest, ManifestEntry } from '@kiln/bus';
import { forEachLimit } from '@kiln/common';
import { KilnError } from '@kiln/protocol';
import type { pb } from '@kiln/protocol';
import type { BlobStore, Digest } from '@kiln/store';

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
/** Files fetched from the client at once (single files), and packs at once. */
const FILE_CONCURRENCY = 8;
const PACK_CONCURRENCY = 4;
/** Files up to this size go in packs; a pack holds up to PACK_FILES files or PACK_BYTES. */
const PACK_MAX_FILE = 64 * 1024;
const PACK_FILES = 2_048;
const PACK_BYTES = 4 << 20;
/** Contexts whose packed files are remembered. */
const CONTEXTS = 32;

interface PackRef {
  pack: string;
  offset: number;
}

/** A client's listing of a directory and its digest of it ('' when it gave none). */
export interface Listing {
  entries: ManifestEntry[];
  digest: string;
}

/** What the sync needs of the session: asking the client for its manifest and files. */
export interface ContextSource {
  /**
   * The directory's listing; `'unchanged'` when `ifChangedFrom` (a listing digest the client
   * gave earlier) is its digest now.
   */
  manifest(r: LocalSyncRequest, ifChangedFrom?: string): Promise<Listing | 'unchanged'>;
  /** The bytes of `paths` back to back, into `sink` (which is ended, or destroyed on failure). */
  files(dir: string, paths: string[], sink: PassThrough): Promise<void>;
}

export class ContextSyncError extends KilnError {
  constructor(code: string, message: string, path: string) {
    super(code, message, { details: { path } });
  }
}

/** The last sync of a context: its client's listing digest, the manifest, the blobs it names. */
interface LastSync {
  listing: string;
  manifest: string;
  blobs: string[];
}

/**
 * Of recent contexts: the packed files of the last manifest (digest -> where its bytes are), and
 * that last sync (see {@link LastSync}).
 */
export class PackIndex {
  readonly #contexts = new Map<string, { refs: Map<string, PackRef>; last?: LastSync }>();

  get(key: string): Map<string, PackRef> | undefined {
    return this.#contexts.get(key)?.refs;
  }

  lastSync(key: string): LastSync | undefined {
    return this.#contexts.get(key)?.last;
  }

  set(key: string, refs: Map<string, PackRef>, last?: LastSync): void {
    this.#contexts.delete(key);
    this.#contexts.set(key, { refs, ...(last ? { last } : {}) });
    while (this.#contexts.size > CONTEXTS)
      this.#contexts.delete(this.#contexts.keys().next().value!);
  }
}

/**
 * Passes a pack's bytes through while checking each file's slice against its digest; fails at the
 * end (so the pack is never stored) when one does not match or the total length differs.
 */
function packChecker(files: readonly ManifestEntry[]): Transform {
  let i = 0;
  let left = files[0]?.size ?? 0;
  let hash = createHash('sha256');
  const check = (): Error | undefined => {
    const f = files[i]!;
    const got = `sha256:${hash.digest('hex')}`;
    i++;
    left = files[i]?.size ?? 0;
    hash = createHash('sha256');
    return got === f.digest
      ? undefined
      : new ContextSyncError('LOCAL_CHANGED', `${f.path} changed during the sync`, f.path);
  };
  let failed: Error | undefined;
  // Empty files at the start (or after a full slice) are complete before any byte arrives.
  const skipEmpty = (): void => {
    while (!failed && i < files.length && left === 0) failed = check();
  };
  skipEmpty();
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      let at = 0;
      while (!failed && at < chunk.length) {
        if (i >= files.length) {
          failed = new ContextSyncError('LOCAL_CHANGED', 'a file grew during the sync', '');
          break;
        }
        const n = Math.min(left, chunk.length - at);
        hash.update(chunk.subarray(at, at + n));
        at += n;
        left -= n;
        if (left === 0) {
          failed = check();
          skipEmpty();
        }
      }
      cb(failed ?? null, failed ? undefined : chunk);
    },
    flush(cb) {
      if (!failed && i < files.length)
        failed = new ContextSyncError(
          'LOCAL_CHANGED',
          `${files[i]!.path} changed during the sync`,
          files[i]!.path,
        );
      cb(failed ?? null);
    },
  });
}

/**
 * The packed files of the asker's base manifest. Any manifest will do: a file is reused only by
 * its content digest (and each slice is checked by its reader), so a stale or foreign base only
 * costs files asked for again; one that cannot be read is ignored.
 */
async function baseRefs(store: BlobStore, r: LocalSyncRequest): Promise<Map<string, PackRef>> {
  const refs = new Map<string, PackRef>();
  if (typeof r.base !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(r.base)) return refs;
  try {
    const chunks: Buffer[] = [];
    for await (const c of await store.get(r.base as Digest)) chunks.push(c as Buffer);
    const m = JSON.parse(Buffer.concat(chunks).toString()) as Partial<LocalManifest>;
    for (const e of Array.isArray(m.entries) ? m.entries : [])
      if (typeof e.digest === 'string' && typeof e.pack === 'string')
        refs.set(e.digest, { pack: e.pack, offset: Number(e.offset ?? 0) });
  } catch {
    refs.clear(); // unreadable: nothing to reuse
  }
  return refs;
}

/** The key a context's packed files (and last sync) are remembered under. */
function indexKey(sharedKey: string, r: LocalSyncRequest, tenant: string): string {
  return JSON.stringify([
    sharedKey,
    r.dir,
    r.includePatterns,
    r.excludePatterns,
    r.followPaths,
    tenant,
  ]);
}

export interface SyncStats {
  files: number;
  /** Files that crossed the wire, and the packs they went in. */
  fetched: number;
  packs: number;
  /** Whether the client answered that its listing is the last one synced (no entries sent). */
  unchanged: boolean;
}

/** The last sync's manifest, if the client says its listing is unchanged and its blobs remain. */
async function unchangedSync(
  store: BlobStore,
  src: ContextSource,
  r: LocalSyncRequest,
  last: LastSync,
): Promise<{ manifest: string } | { listing: Listing }> {
  const got = await src.manifest(r, last.listing);
  if (got !== 'unchanged') return { listing: got };
  const kept = await Promise.all(
    [last.manifest, ...last.blobs].map((d) => store.touch(d as Digest)),
  );
  if (kept.every(Boolean)) return { manifest: last.manifest };
  return { listing: await fullListing(src, r) };
}

/** The directory's whole listing (asked without a digest: `unchanged` is a protocol error). */
async function fullListing(src: ContextSource, r: LocalSyncRequest): Promise<Listing> {
  const got = await src.manifest(r);
  if (got === 'unchanged')
    throw new ContextSyncError('SESSION_ERROR', 'the client answered unchanged unasked', '');
  return got;
}

/**
 * Syncs one directory; resolves with the manifest blob's digest (see the module contract).
 * `tenant`: the session's (part of the key of what is remembered of the context).
 */
export async function syncContext(
  store: BlobStore,
  src: ContextSource,
  r: LocalSyncRequest,
  sharedKey: string,
  index: PackIndex,
  stats: SyncStats = { files: 0, fetched: 0, packs: 0, unchanged: false },
  tenant = '',
): Promise<string> {
  const key = sharedKey ? indexKey(sharedKey, r, tenant) : undefined;
  const last = key ? index.lastSync(key) : undefined;
  let listing: Listing;
  if (last) {
    const u = await unchangedSync(store, src, r, last);
    if ('manifest' in u) {
      stats.unchanged = true;
      return u.manifest;
    }
    listing = u.listing;
  } else listing = await fullListing(src, r);
  const entries = listing.entries;
  entries.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  const files = entries.filter((e) => (e.mode & S_IFMT) === S_IFREG);
  stats.files = files.length;
  const known = new Map([...(key ? (index.get(key) ?? []) : []), ...(await baseRefs(store, r))]);
  const packOk = new Map<string, Promise<boolean>>();
  const toPack: ManifestEntry[] = [];
  const single: ManifestEntry[] = [];
  await forEachLimit(files, FILE_CONCURRENCY, async (f) => {
    if (!f.digest)
      throw new ContextSyncError(
        'SESSION_ERROR',
        `the manifest has no digest for ${f.path}`,
        f.path,
      );
    const ref = f.size <= PACK_MAX_FILE ? known.get(f.digest) : undefined;
    if (ref) {
      let ok = packOk.get(ref.pack);
      // touch, not has: a reused blob must look used to the store's collector (cache-store).
      if (!ok) packOk.set(ref.pack, (ok = store.touch(ref.pack as Digest)));
      if (await ok) {
        f.pack = ref.pack;
        f.offset = ref.offset;
        return;
      }
    }
    if (await store.touch(f.digest as Digest)) return;
    (f.size <= PACK_MAX_FILE ? toPack : single).push(f);
  });
  // In path order, so that a worker reads each pack once.
  toPack.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  const batches: ManifestEntry[][] = [];
  let bytes = 0;
  for (const f of toPack) {
    const last = batches[batches.length - 1];
    if (!last || last.length >= PACK_FILES || bytes + f.size > PACK_BYTES) {
      batches.push([f]);
      bytes = f.size;
    } else {
      last.push(f);
      bytes += f.size;
    }
  }
  await forEachLimit(batches, PACK_CONCURRENCY, async (batch) => {
    const sink = new PassThrough({ highWaterMark: 1 << 20 });
    const checker = packChecker(batch);
    // Errors (a file that changed) reach the put through `checker`.
    pipeline(sink, checker, () => undefined);
    const size = batch.reduce((n, f) => n + f.size, 0);
    const put = store.put(undefined, checker, { size });
    const got = src.files(
      r.dir,
      batch.map((f) => f.path),
      sink,
    );
    // A failed put (a file changed) must not wait for the rest of the pack.
    const [info] = await Promise.all([put, got]).catch((e: unknown) => {
      sink.destroy();
      throw e;
    });
    let offset = 0;
    for (const f of batch) {
      f.pack = info.digest;
      f.offset = offset;
      offset += f.size;
    }
    stats.packs++;
    stats.fetched += batch.length;
  });
  await forEachLimit(single, FILE_CONCURRENCY, async (f) => {
    const sink = new PassThrough({ highWaterMark: 1 << 20 });
    // The client's refusal destroys the sink with its error, possibly before the store reads
    // from it: without a listener that would be an uncaught 'error' and end the scheduler. The
    // same error rejects `got`, handled below.
    sink.on('error', () => undefined);
    const put = store.put(f.digest as Digest, sink, { size: f.size });
    const got = src.files(r.dir, [f.path], sink);
    await Promise.all([put, got]).catch((e: unknown) => {
      sink.destroy();
      throw e;
    });
    stats.fetched++;
  });
  const body = Buffer.from(JSON.stringify({ entries } satisfies LocalManifest));
  // By its digest: an unchanged context's manifest is stored already, and is then only touched
  // (no write and fsync of a blob of ~100 bytes a file in every build).
  const digest: Digest = `sha256:${createHash('sha256').update(body).digest('hex')}`;
  const info = await store.put(digest, body, { size: body.length });
  if (key) {
    const refs = new Map<string, PackRef>();
    const blobs = new Set<string>();
    for (const f of files) {
      if (f.pack !== undefined) refs.set(f.digest!, { pack: f.pack, offset: f.offset ?? 0 });
      blobs.add(f.pack ?? f.digest!);
    }
    index.set(
      key,
      refs,
      listing.digest
        ? { listing: listing.digest, manifest: info.digest, blobs: [...blobs] }
        : undefined,
    );
  }
  return info.digest;
}

/** A JSON list of strings (a `local.*` attr), [] when absent, undefined when malformed. */
function stringList(v: string | undefined): string[] | undefined {
  if (!v) return [];
  try {
    const a: unknown = JSON.parse(v);
    return Array.isArray(a) && a.every((x) => typeof x === 'string') ? a : undefined;
  } catch {
    return undefined;
  }
}

/**
 * What a `local://` source op asks of its client's directory, as a worker running it asks
 * (BuildKit's `local.*` attrs); undefined for another op or malformed attrs (the worker then
 * reports the typed error).
 */
export function localSyncRequest(op: pb.IOp): LocalSyncRequest | undefined {
  const id = op.source?.identifier ?? '';
  if (!id.startsWith('local://')) return undefined;
  const attrs = op.source?.attrs ?? {};
  const includePatterns = stringList(attrs['local.includepattern']);
  const excludePatterns = stringList(attrs['local.excludepatterns']);
  const followPaths = stringList(attrs['local.followpaths']);
  if (!includePatterns || !excludePatterns || !followPaths) return undefined;
  return { dir: id.slice('local://'.length), includePatterns, excludePatterns, followPaths };
}
