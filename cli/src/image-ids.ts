/**
 * The image ids an oci/docker tar holds, for `--iidfile`, `--metadata-file` and `-q`, read from the
 * written file (its entries' headers only, then index.json and the manifest): buildx's
 * `containerimage.digest` (the manifest, or the index of several platforms) and
 * `containerimage.config.digest` (the config of a single-platform image).
 */
import { open } from 'node:fs/promises';

export interface ImageIds {
  'containerimage.digest'?: string;
  'containerimage.config.digest'?: string;
}

interface Entry {
  offset: number;
  size: number;
}

/** Offsets and sizes of the tar's regular files, by name (`./` dropped). */
async function tarEntries(file: string): Promise<{
  entries: Map<string, Entry>;
  read: (e: Entry) => Promise<Buffer>;
  close: () => Promise<void>;
}> {
  const fh = await open(file, 'r');
  const entries = new Map<string, Entry>();
  const header = Buffer.alloc(512);
  let pos = 0;
  let longName: string | undefined;
  for (;;) {
    const { bytesRead } = await fh.read(header, 0, 512, pos);
    if (bytesRead < 512 || header.every((b) => b === 0)) break;
    const field = (o: number, n: number): string =>
      header
        .subarray(o, o + n)
        .toString('latin1')
        .replace(/\0.*$/s, '');
    const size = parseInt(field(124, 12).trim() || '0', 8);
    const type = field(156, 1);
    const prefix = field(345, 155);
    let name = longName ?? (prefix ? `${prefix}/${field(0, 100)}` : field(0, 100));
    longName = undefined;
    const data = { offset: pos + 512, size };
    if (type === 'L') {
      const b = Buffer.alloc(size);
      await fh.read(b, 0, size, data.offset);
      longName = b.toString('utf8').replace(/\0.*$/s, '');
    } else if (type === '0' || type === '') {
      name = name.replace(/^\.\//, '');
      entries.set(name, data);
    }
    pos += 512 + Math.ceil(size / 512) * 512;
  }
  return {
    entries,
    read: async (e) => {
      const b = Buffer.alloc(e.size);
      await fh.read(b, 0, e.size, e.offset);
      return b;
    },
    close: () => fh.close(),
  };
}

export async function imageIdsFromTar(file: string): Promise<ImageIds> {
  const t = await tarEntries(file);
  try {
    const json = async (name: string): Promise<unknown> => {
      const e = t.entries.get(name);
      return e ? (JSON.parse((await t.read(e)).toString('utf8')) as unknown) : undefined;
    };
    const index = (await json('index.json')) as
      { manifests?: { digest?: string; mediaType?: string }[] } | undefined;
    const top = index?.manifests?.length === 1 ? index.manifests[0] : undefined;
    if (!top?.digest) return {};
    const out: ImageIds = { 'containerimage.digest': top.digest };
    let manifest = (await json(`blobs/${top.digest.replace(':', '/')}`)) as
      { config?: { digest?: string }; manifests?: { digest?: string }[] } | undefined;
    // A one-platform index (as BuildKit's oci exporter may write): its manifest is the image.
    // An index of an image and its attestation manifests has no config digest (buildkitd
    // v0.11.6 reports none either).
    if (manifest?.manifests?.length === 1 && manifest.manifests[0]?.digest) {
      const inner = manifest.manifests[0].digest;
      const m = (await json(`blobs/${inner.replace(':', '/')}`)) as typeof manifest;
      if (m?.config?.digest) manifest = m;
    }
    if (manifest?.config?.digest) out['containerimage.config.digest'] = manifest.config.digest;
    return out;
  } finally {
    await t.close();
  }
}
