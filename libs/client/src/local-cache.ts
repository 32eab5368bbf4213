/**
 * The client's side of a `type=local` cache (BuildKit's local cache exporter and importer, whose
 * files are on the client's machine): `localCacheWriter` writes an exported layout (a tar from
 * the farm) into `dest`, and `cacheSolveOptions` turns `--cache-from`/`--cache-to` entries into
 * what the solve and the session carry (a local import's directory is served by the session).
 *
 * Writing: blobs are content-addressed and written under a temporary name then renamed (a blob
 * already there is kept); `index.json` is merged last (the entry with the same tag replaced, the
 * others kept), so a reader never sees an index naming a blob that is not there yet.
 */
import { createWriteStream } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join, normalize, resolve } from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { KilnError } from '@kiln/protocol';
import { REF_NAME_ANNOTATION, localCacheImportDir, putDescToLayoutIndex } from '@kiln/remote-cache';
import type { Descriptor } from '@kiln/remote-cache';

export interface CacheEntry {
  type: string;
  attrs?: Record<string, string>;
}

async function writeAtomic(path: string, data: Buffer): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.kiln-tmp-${process.pid}`;
  await writeFile(tmp, data);
  await rename(tmp, path);
}

/** The bound on an exported layout's `index.json` (held in memory to be merged). */
const MAX_INDEX_BYTES = 16 * 1024 * 1024;

async function writeStreamAtomic(path: string, data: AsyncIterable<Buffer>): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.kiln-tmp-${process.pid}`;
  try {
    await pipeline(data, createWriteStream(tmp));
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/** Where a `type=local` cache export goes: the layout tar is written into `dest`. */
export function localCacheWriter(dest: string): Writable {
  const extract = tar.extract();
  let index: Buffer | undefined;
  const done = new Promise<void>((resolveDone, reject) => {
    extract.on('entry', (header, stream, next) => {
      const name = normalize(header.name).replace(/\/+$/, '');
      const fail = (message: string): void => {
        stream.resume();
        reject(new KilnError('CACHE_EXPORT_INVALID', message, { details: { name: header.name } }));
      };
      if (name === '..' || name.startsWith('../') || name.startsWith('/'))
        return fail(`bad path in cache export: ${header.name}`);
      if (header.type === 'directory') {
        stream.resume();
        return next();
      }
      if (header.type !== 'file') return fail(`not a regular file in cache export: ${header.name}`);
      if (name === 'index.json') {
        if ((header.size ?? 0) > MAX_INDEX_BYTES)
          return fail(`the cache export's index.json is over ${MAX_INDEX_BYTES} bytes`);
        const chunks: Buffer[] = [];
        stream.on('data', (c: unknown) => chunks.push(c as Buffer));
        stream.on('end', () => {
          index = Buffer.concat(chunks);
          next();
        });
        return;
      }
      // Blobs go straight to disk (a layer may be large): a temporary name, then renamed.
      writeStreamAtomic(join(dest, name), stream as unknown as AsyncIterable<Buffer>).then(
        () => next(),
        reject,
      );
    });
    extract.on('finish', () => {
      (async () => {
        if (!index)
          throw new KilnError('CACHE_EXPORT_INVALID', 'the cache export has no index.json');
        const fresh = JSON.parse(index.toString()) as { manifests?: Descriptor[] };
        let merged = await readFile(join(dest, 'index.json'), 'utf8').catch(() => undefined);
        for (const d of fresh.manifests ?? []) {
          const tag = d.annotations?.[REF_NAME_ANNOTATION] ?? 'latest';
          merged = putDescToLayoutIndex(merged, d, tag);
        }
        await writeAtomic(join(dest, 'index.json'), Buffer.from(merged ?? ''));
      })().then(resolveDone, reject);
    });
    extract.on('error', reject);
  });
  done.catch(() => undefined);
  return new Writable({
    write(chunk: Buffer, _enc, cb) {
      if (extract.write(chunk)) cb();
      else extract.once('drain', () => cb());
    },
    final(cb) {
      extract.end(undefined);
      done.then(
        () => cb(),
        (e: unknown) => cb(e as Error),
      );
    },
  });
}

/**
 * The solve's cache entries and the session's extra directories for `--cache-from` /
 * `--cache-to` entries: a local import's `src` is served as `localCacheImportDir(i)`; a local
 * export's `dest` is where `onCacheExport(i)` writes.
 */
export function cacheSolveOptions(
  imports: readonly CacheEntry[],
  exports: readonly CacheEntry[],
): {
  localDirs: Record<string, string>;
  onCacheExport: (index: number) => Writable;
} {
  const localDirs: Record<string, string> = {};
  for (const [i, e] of imports.entries())
    if (e.type === 'local' && e.attrs?.src)
      localDirs[localCacheImportDir(i)] = resolve(e.attrs.src);
  return {
    localDirs,
    onCacheExport: (i) => {
      const e = exports[i];
      const dest = e?.type === 'local' ? e.attrs?.dest : undefined;
      if (!dest) throw new KilnError('EXPORT_UNEXPECTED', `cache export ${i} writes nothing here`);
      return localCacheWriter(resolve(dest));
    },
  };
}
