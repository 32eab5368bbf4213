/**
 * Cache import and export in BuildKit's formats (`--cache-from`, `--cache-to`; the solve's
 * `cache_imports` and `cache_exports`). The format itself is `@kiln/remote-cache`'s; this module
 * moves it: an import is read (its config parsed, its blobs fetched into the store only on a
 * hit), an export is written from the solve's BuildKit cache nodes and the results' layer blobs.
 *
 * - `type=local`: import `src=DIR` (served by the client's session as
 *   `localCacheImportDir(i)`, read through it), `tag=` (default `latest`) or `digest=`; export
 *   `dest=DIR`, `tag=`, `mode=min|max` (default min): a tar of the OCI layout streamed to the
 *   client (`ExportChunk.cache`), which writes it into DIR.
 * - An import that cannot be read is skipped with a warning, as BuildKit does: the build runs
 *   without it. An export that fails fails the build.
 * - mode=min writes the result's records with its layers (and the records it links from, without
 *   results); mode=max writes every vertex's result, those of vertices an import made
 *   unnecessary (never run) from that import.
 */
import type { Readable } from 'node:stream';
import { createHash } from 'node:crypto';
import tar from 'tar-stream';
import type { Logger } from 'pino';
import type { TaskResult } from '@kiln/bus';
import { workerpb } from '@kiln/protocol';
import type { control } from '@kiln/protocol';
import type { BlobStore, Digest } from '@kiln/store';
import { toReference } from '@kiln/registry';
import type { RegistryClient } from '@kiln/registry';
import {
  CACHE_CONFIG_MEDIA_TYPE,
  INLINE_CACHE_KEY,
  ImportedCache,
  OCI_LAYOUT,
  importInlineCache,
  inlineCacheValue,
  cacheBlobs,
  exportCache,
  findInLayoutIndex,
  localCacheImportDir,
  parseCacheConfig,
  putDescToLayoutIndex,
  splitCacheIndex,
} from '@kiln/remote-cache';
import type { CacheNode, NodeResult, ResultLayer } from '@kiln/remote-cache';
import { SolveRequestInvalidError } from '../solver/errors.js';
import type { Materializer, OutputResult, VertexSnapshot } from '../solver/solve.js';
import type { PlatformResult } from './exports.js';
import { exportS3Cache, importS3Cache, s3CacheConfig } from './s3-cache.js';
import type { ClientSession } from './session.js';

type CacheEntry = NonNullable<Parameters<typeof control.CacheOptionsEntry.create>[0]>;

export const CACHE_IMPORT_TYPES = ['local', 'registry', 's3'] as const;
export const CACHE_EXPORT_TYPES = ['local', 'registry', 'inline', 's3'] as const;
const MODES = ['min', 'max'];
const DEFAULT_LAYER_MEDIA_TYPE = 'application/vnd.oci.image.layer.v1.tar+gzip';

/** Rejects cache entries this scheduler cannot run, before the build starts. */
export function checkCacheOptions(
  imports: readonly CacheEntry[],
  exports: readonly CacheEntry[],
  hasSession: boolean,
): void {
  const check = (e: CacheEntry, what: 'import' | 'export', types: readonly string[]): void => {
    const type = e.type ?? '';
    if (!types.includes(type))
      throw new SolveRequestInvalidError(
        `cache ${what} type ${JSON.stringify(type)} is not supported (want ${types.join(', ')})`,
        { cache: type },
      );
    const mode = e.attrs?.mode;
    if (what === 'export' && mode !== undefined && !MODES.includes(mode))
      throw new SolveRequestInvalidError(
        `cache export mode ${JSON.stringify(mode)}: want min or max`,
        {
          cache: type,
        },
      );
    if (type === 'registry') {
      const ref = e.attrs?.ref ?? '';
      try {
        toReference(ref);
      } catch (err) {
        throw new SolveRequestInvalidError(
          `cache ${what} type=registry: ref ${JSON.stringify(ref)} is not an image reference: ${(err as Error).message}`,
          { cache: type, ref },
        );
      }
    }
    if (type === 's3') s3CacheConfig(e.attrs ?? {});
    if (type === 'local' && !hasSession)
      throw new SolveRequestInvalidError(`a type=local cache ${what} needs the build's session`, {
        cache: type,
      });
  };
  for (const e of imports) check(e, 'import', CACHE_IMPORT_TYPES);
  for (const e of exports) check(e, 'export', CACHE_EXPORT_TYPES);
}

/** An imported cache and where its blobs come from. */
export interface LoadedImport {
  cache: ImportedCache;
  blob(digest: string, size: number): Readable | Promise<Readable>;
  name: string;
}

async function readAll(r: Readable, max = 64 * 1024 * 1024): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of r) {
    n += (c as Buffer).length;
    if (n > max)
      throw new SolveRequestInvalidError('a cache index or config is larger than 64 MiB');
    parts.push(c as Buffer);
  }
  return Buffer.concat(parts);
}

const blobPath = (digest: string): string => `blobs/${digest.replace(':', '/')}`;

async function loadLocal(
  index: number,
  e: CacheEntry,
  session: ClientSession,
): Promise<LoadedImport> {
  const dir = localCacheImportDir(index);
  const files = await session.listDir(dir);
  const read = (path: string): Readable => {
    if (!files.has(path))
      throw new SolveRequestInvalidError(`the local cache has no ${path}`, { cache: 'local' });
    return session.readFile(dir, path);
  };
  const layoutIndex = (await readAll(read('index.json'))).toString();
  const desc = findInLayoutIndex(layoutIndex, {
    ...(e.attrs?.tag ? { tag: e.attrs.tag } : {}),
    ...(e.attrs?.digest ? { digest: e.attrs.digest } : {}),
  });
  const { config, layers } = splitCacheIndex(
    (await readAll(read(blobPath(desc.digest)))).toString(),
  );
  const cache = new ImportedCache(
    parseCacheConfig((await readAll(read(blobPath(config.digest)))).toString()),
    layers,
  );
  return { cache, blob: (d) => read(blobPath(d)), name: `local:${e.attrs?.src ?? dir}` };
}

/** A descriptor as the registry client takes it (the store's digest type). */
const blobRef = (d: { digest: string; size: number }): { digest: Digest; size: number } => ({
  digest: d.digest as Digest,
  size: d.size,
});

/**
 * BuildKit's registry importer: `ref` names the cache's index (BuildKit's manifest list), or an
 * image (or an index of images) whose config carries an inline cache: one import per image.
 */
async function loadRegistry(e: CacheEntry, registry: RegistryClient): Promise<LoadedImport[]> {
  const ref = toReference(e.attrs?.ref ?? '');
  const name = `registry:${e.attrs?.ref ?? ''}`;
  // The store verifies what it is given: the registry client need not hash it too.
  const blob = (digest: string, size: number) =>
    registry.fetchBlob(ref, blobRef({ digest, size }), { verify: false });
  const { descriptor } = await registry.resolve(ref);
  const top = await registry.fetchManifest(ref, descriptor);
  const doc = top.document;
  if (
    doc.kind === 'index' &&
    doc.index.manifests.some((m) => m.mediaType === CACHE_CONFIG_MEDIA_TYPE)
  ) {
    const { config, layers } = splitCacheIndex(top.bytes.toString());
    const cache = new ImportedCache(
      parseCacheConfig(
        (await registry.readBlob(ref, blobRef(config), 64 * 1024 * 1024)).toString(),
      ),
      layers,
    );
    return [{ cache, blob, name }];
  }
  const manifests =
    doc.kind === 'manifest'
      ? [doc.manifest]
      : await Promise.all(
          doc.index.manifests.map(async (m) => {
            const f = await registry.fetchManifest(ref, m);
            return f.document.kind === 'manifest' ? f.document.manifest : undefined;
          }),
        );
  const out: LoadedImport[] = [];
  for (const m of manifests) {
    if (!m) continue;
    const config = JSON.parse((await registry.readBlob(ref, m.config)).toString()) as Record<
      string,
      unknown
    >;
    const cache = importInlineCache(config, m.layers);
    if (cache) out.push({ cache, blob, name: `${name} (inline)` });
  }
  if (out.length === 0)
    throw new SolveRequestInvalidError(
      `${e.attrs?.ref ?? ''} holds neither a cache nor an inline cache`,
    );
  return out;
}

/**
 * The image configs of a build with `type=inline` among its cache exports: each platform's
 * config carries the records of its result (BuildKit's inline cache, mode=min), for the image
 * exporters to write.
 */
export function withInlineCache(results: readonly PlatformResult[]): PlatformResult[] {
  return results.map((pr) => {
    const s = pr.solved;
    const nodes = s.cacheNodes.get(s.resultRef.digest)?.[s.resultRef.index] ?? [];
    const layers = (s.result.layers ?? []).map((l) => ({
      digest: l.digest || l.diffId || '',
      diffId: l.diffId ?? '',
      size: Number(l.size ?? 0),
      mediaType: l.mediaType || DEFAULT_LAYER_MEDIA_TYPE,
    }));
    if (nodes.length === 0 || layers.length === 0) return pr;
    const createdAt = new Date().toISOString();
    const value = inlineCacheValue(
      exportCache(nodes, new Map(nodes.map((n) => [n, { layers, createdAt }]))),
    );
    if (!value) return pr;
    const config = JSON.parse(pr.imageConfigJson) as Record<string, unknown>;
    return { ...pr, imageConfigJson: JSON.stringify({ ...config, [INLINE_CACHE_KEY]: value }) };
  });
}

/** Where an import comes from, as its progress vertex names it (BuildKit's wording). */
function importSource(e: CacheEntry): string {
  const a = e.attrs ?? {};
  if (e.type === 'local') return `local:${a.src ?? ''}`;
  if (e.type === 's3') return `s3:${a.bucket ?? ''}/${a.prefix ?? ''}${a.name ?? 'buildkit'}`;
  return a.ref ?? '';
}

/**
 * Reads every import, each shown as a vertex `importing cache manifest from ...` (as buildctl
 * does); one that cannot be read ends its vertex with the error, is logged, and is left out: the
 * build goes on without it.
 */
export async function loadCacheImports(
  entries: readonly CacheEntry[],
  session: ClientSession | undefined,
  registry: RegistryClient,
  log: Logger,
  onVertex: (v: VertexSnapshot) => void = () => undefined,
): Promise<LoadedImport[]> {
  const out: LoadedImport[] = [];
  for (const [i, e] of entries.entries()) {
    const snap: VertexSnapshot = {
      digest: `cache-import-${i}`,
      inputs: [],
      name: `importing cache manifest from ${importSource(e)}`,
      cached: false,
      startedAt: Date.now(),
    };
    onVertex({ ...snap });
    try {
      if (e.type === 'local' && session) out.push(await loadLocal(i, e, session));
      if (e.type === 'registry') out.push(...(await loadRegistry(e, registry)));
      if (e.type === 's3') {
        const c = s3CacheConfig(e.attrs ?? {});
        const { cache, blob } = await importS3Cache(c);
        out.push({ cache, blob, name: `s3:${c.bucket}/${c.prefix}` });
      }
      onVertex({ ...snap, completedAt: Date.now() });
    } catch (err) {
      const message = String((err as Error).message ?? err);
      log.warn({ cache: e.type, err: message }, 'cache import skipped');
      onVertex({ ...snap, completedAt: Date.now(), error: message });
    }
  }
  return out;
}

/** containerd's identity.ChainID; `empty` for no layers (Kiln's result id of scratch). */
function chainId(diffIds: readonly string[]): string {
  let id = '';
  for (const d of diffIds)
    id = id ? `sha256:${createHash('sha256').update(`${id} ${d}`).digest('hex')}` : d;
  return id || 'empty';
}

/**
 * What solveGraph asks before running a vertex: a result for each output from an import, with
 * its blobs copied into the store first (a record never names a blob the store lacks).
 */
export function importedLookup(
  imports: readonly LoadedImport[],
  store: BlobStore,
): (nodes: readonly (readonly CacheNode[])[]) => Promise<OutputResult[] | undefined> {
  return async (nodes) => {
    const hits: { imp: LoadedImport; layers: ResultLayer[] }[] = [];
    for (const perOutput of nodes) {
      let found: { imp: LoadedImport; layers: ResultLayer[] } | undefined;
      for (const imp of imports) {
        for (const n of perOutput) {
          const h = imp.cache.hit(n);
          if (h) {
            found = { imp, layers: h.layers };
            break;
          }
        }
        if (found) break;
      }
      if (!found) return undefined;
      hits.push(found);
    }
    const out: OutputResult[] = [];
    for (const h of hits) {
      for (const l of h.layers) {
        if (await store.has(l.digest as Digest)) continue;
        await store.put(l.digest as Digest, await h.imp.blob(l.digest, l.size), {
          size: l.size,
          mediaType: l.mediaType,
        });
      }
      out.push(
        workerpb.OutputResult.create({
          resultId: chainId(h.layers.map((l) => l.diffId)),
          layers: h.layers.map((l) => ({ ...l })),
        }),
      );
    }
    return out;
  };
}

export interface CacheExportDeps {
  store: BlobStore;
  registry: RegistryClient;
  session: ClientSession | undefined;
  /** Makes a held result's layers blobs; undefined when its holder lost it. */
  materialize: Materializer;
  /**
   * The build's imports ({@link importedLookup}): the results of the vertices an import made
   * unnecessary (never run, so with no task result) come from there, as BuildKit exports them.
   */
  imported?: ReturnType<typeof importedLookup>;
  log: Logger;
}

/** A result's layers as an export writes them. */
function resultLayers(layers: NonNullable<OutputResult['layers']>): ResultLayer[] {
  return layers.map((l) => ({
    digest: l.digest ?? '',
    diffId: l.diffId ?? '',
    size: Number(l.size ?? 0),
    mediaType: l.mediaType || DEFAULT_LAYER_MEDIA_TYPE,
  }));
}

/** The layers of one vertex output as blobs, or undefined when they cannot be had. */
async function blobLayers(
  r: TaskResult,
  index: number,
  materialize: Materializer,
): Promise<ResultLayer[] | undefined> {
  const out = r.outputs[index];
  if (!out) return undefined;
  let layers = out.layers ?? [];
  if (layers.some((l) => !l.digest)) {
    if (!r.workerId) return undefined;
    const made = await materialize(r.workerId, out.resultId ?? '');
    if (!made) return undefined;
    layers = made;
  }
  return resultLayers(layers);
}

/** An import's result for one vertex output (its blobs then in the store), if one has it. */
async function importedLayers(
  nodes: readonly CacheNode[],
  imported: CacheExportDeps['imported'],
): Promise<ResultLayer[] | undefined> {
  const found = imported ? await imported([nodes]) : undefined;
  return found?.[0] ? resultLayers(found[0].layers ?? []) : undefined;
}

/** The nodes and results one export writes, over every platform's solve. */
async function collect(
  results: readonly PlatformResult[],
  mode: string,
  materialize: Materializer,
  imported: CacheExportDeps['imported'],
): Promise<{ roots: CacheNode[]; withResult: Map<CacheNode, NodeResult> }> {
  const roots: CacheNode[] = [];
  const withResult = new Map<CacheNode, NodeResult>();
  const createdAt = new Date().toISOString();
  for (const pr of results) {
    const s = pr.solved;
    const wanted =
      mode === 'max'
        ? [...s.cacheNodes.entries()].flatMap(([digest, outs]) =>
            outs.map((_, index) => ({ digest, index })),
          )
        : [s.resultRef];
    for (const { digest, index } of wanted) {
      const nodes = s.cacheNodes.get(digest)?.[index] ?? [];
      if (nodes.length === 0) continue;
      roots.push(...nodes);
      const r = s.vertices.get(digest);
      // No task result: an import answered a vertex after it, so this one never ran.
      const layers = r
        ? await blobLayers(r, index, materialize)
        : await importedLayers(nodes, imported);
      if (!layers || layers.length === 0) continue;
      for (const n of nodes) withResult.set(n, { layers, createdAt });
    }
  }
  return { roots, withResult };
}

/** A type=local export as a tar of its OCI layout. */
function layoutTar(
  store: BlobStore,
  exported: ReturnType<typeof exportCache>,
  tag: string,
): Readable {
  const blobs = cacheBlobs(exported);
  const pack = tar.pack();
  const entry = (name: string, data: Buffer): Promise<void> =>
    new Promise((resolve, reject) =>
      pack.entry({ name, mode: 0o644 }, data, (err) => (err ? reject(err) : resolve())),
    );
  (async () => {
    await entry('oci-layout', Buffer.from(OCI_LAYOUT));
    for (const l of exported.layers) {
      const data = await readAll(await store.get(l.digest as Digest), Number.MAX_SAFE_INTEGER);
      await entry(blobPath(l.digest), data);
    }
    await entry(blobPath(blobs.configDesc.digest), blobs.config);
    await entry(blobPath(blobs.indexDesc.digest), blobs.index);
    await entry('index.json', Buffer.from(putDescToLayoutIndex(undefined, blobs.indexDesc, tag)));
    pack.finalize();
  })().catch((e: unknown) => pack.destroy(e instanceof Error ? e : new Error(String(e))));
  return pack as unknown as Readable;
}

/** BuildKit's registry exporter: the blobs, then the index as the manifest of `ref`. */
async function pushCache(
  registry: RegistryClient,
  store: BlobStore,
  exported: ReturnType<typeof exportCache>,
  refText: string,
): Promise<string> {
  const ref = toReference(refText);
  const blobs = cacheBlobs(exported);
  for (const l of exported.layers)
    await registry.pushBlob(ref, blobRef(l), () => store.get(l.digest as Digest), {});
  await registry.pushBlob(ref, blobRef(blobs.configDesc), blobs.config);
  return registry.pushManifest(ref, ref.tag ?? 'latest', blobs.index, blobs.indexDesc.mediaType);
}

/** Runs every cache export; resolves with how many artifacts were streamed to the client. */
export async function runCacheExports(
  entries: readonly CacheEntry[],
  results: readonly PlatformResult[],
  d: CacheExportDeps,
): Promise<number> {
  let streamed = 0;
  for (const [i, e] of entries.entries()) {
    // Written by the image exporters (withInlineCache).
    if (e.type === 'inline') continue;
    const mode = e.attrs?.mode ?? 'min';
    const { roots, withResult } = await collect(results, mode, d.materialize, d.imported);
    const exported = exportCache(roots, withResult);
    d.log.info(
      {
        cache: e.type,
        mode,
        records: exported.config.records?.length,
        layers: exported.layers.length,
      },
      'cache exported',
    );
    if (e.type === 'local') {
      if (!d.session) throw new SolveRequestInvalidError('the build has no session');
      await d.session.sendExport(
        i,
        '',
        layoutTar(d.store, exported, e.attrs?.tag || 'latest'),
        true,
      );
      streamed++;
    } else if (e.type === 's3') {
      await exportS3Cache(s3CacheConfig(e.attrs ?? {}), d.store, exported);
    } else if (e.type === 'registry') {
      const digest = await pushCache(d.registry, d.store, exported, e.attrs?.ref ?? '');
      d.log.info({ ref: e.attrs?.ref, digest }, 'cache pushed');
    }
  }
  return streamed;
}
