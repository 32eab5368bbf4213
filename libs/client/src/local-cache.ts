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
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname, join, normalize, resolve } from 'node:path';
import { Writable } from 'node:stream';
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

/** Where a `type=local` cache export goes: the layout tar is written into `dest`. */
export function localCacheWriter(dest: string): Writable {
  const extract = tar.extract();
  let index: Buffer | undefined;
  const done = new Promise<void>((resolveDone, reject) => {
    extract.on('entry', (header, stream, next) => {
      const chunks: Buffer[] = [];
      stream.on('data', (c: unknown) => chunks.push(c as Buffer));
      stream.on('end', () => {
        const name = normalize(header.name);
        const data = Buffer.concat(chunks);
        if (name.startsWith('..') || name.startsWith('/')) {
          reject(new KilnError('CACHE_EXPORT_INVALID', `bad path in cache export: ${header.name}`));
          return;
        }
        if (name === 'index.json') {
          index = data;
          next();
          return;
        }
        writeAtomic(join(dest, name), data).then(() => next(), reject);
      });
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
