/**
 * The final root filesystems of an OCI image tarball (`--output type=oci`), one per platform, and
 * their differences: the peers benchmark's check that Kiln and BuildKit did the same work. Reads
 * the tarball in memory (benchmark images are small), follows index.json through nested indexes to
 * each image manifest, and applies its layers in order with OCI whiteouts (`.wh.NAME` deletes
 * NAME and below, `.wh..wh..opq` empties the directory of what lower layers put there).
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import * as tar from 'tar-stream';

/** What a path is in a root filesystem; mtimes are left out (they differ between builds). */
export interface RootfsEntry {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  /** sha256 of a regular file's content, the target of a link; empty otherwise. */
  data: string;
}

/** Platform (`os/arch[/variant]`) -> path (no leading `/` or `./`) -> entry. */
export type Rootfs = Map<string, Map<string, RootfsEntry>>;

interface Descriptor {
  mediaType?: string;
  digest: string;
}

interface Manifest {
  manifests?: Descriptor[];
  config?: Descriptor;
  layers?: Descriptor[];
}

interface ImageConfig {
  os?: string;
  architecture?: string;
  variant?: string;
}

async function tarEntries(
  data: Buffer,
  onEntry: (header: tar.Header, body: Buffer) => void,
): Promise<void> {
  const plain = data[0] === 0x1f && data[1] === 0x8b ? gunzipSync(data) : data;
  const extract = tar.extract();
  const fed = new Promise<void>((resolve, reject) => {
    extract.on('finish', resolve);
    extract.on('error', reject);
  });
  Readable.from([plain]).pipe(extract);
  for await (const entry of extract) {
    const chunks: Buffer[] = [];
    for await (const c of entry) chunks.push(c as Buffer);
    onEntry(entry.header, Buffer.concat(chunks));
  }
  await fed;
}

const clean = (name: string): string => name.replace(/^(\.?\/)+/, '').replace(/\/+$/, '');

const under = (path: string, dir: string): boolean => dir === '' || path.startsWith(`${dir}/`);

async function applyLayer(fs: Map<string, RootfsEntry>, layer: Buffer): Promise<void> {
  const deletes: string[] = [];
  const opaques: string[] = [];
  const added = new Map<string, RootfsEntry>();
  await tarEntries(layer, (h, body) => {
    const path = clean(h.name);
    const slash = path.lastIndexOf('/');
    const dir = slash < 0 ? '' : path.slice(0, slash);
    const base = path.slice(slash + 1);
    if (base === '.wh..wh..opq') return void opaques.push(dir);
    if (base.startsWith('.wh.'))
      return void deletes.push(dir ? `${dir}/${base.slice(4)}` : base.slice(4));
    if (path === '') return;
    const type = h.type ?? 'file';
    const data =
      type === 'file'
        ? createHash('sha256').update(body).digest('hex')
        : type === 'symlink' || type === 'link'
          ? clean(h.linkname ?? '')
          : '';
    added.set(path, { type, mode: (h.mode ?? 0) & 0o7777, uid: h.uid ?? 0, gid: h.gid ?? 0, data });
  });
  // Whiteouts hide what the lower layers hold; entries of this layer stay.
  for (const p of [...fs.keys()]) {
    if (deletes.some((d) => p === d || under(p, d)) || opaques.some((d) => under(p, d)))
      fs.delete(p);
  }
  for (const [p, e] of added) fs.set(p, e);
}

/** The root filesystem of each platform's image in the OCI tarball at `path`. */
export async function ociRootfs(path: string): Promise<Rootfs> {
  const files = new Map<string, Buffer>();
  await tarEntries(await readFile(path), (h, body) => {
    if ((h.type ?? 'file') === 'file') files.set(clean(h.name), body);
  });
  const blob = (digest: string): Buffer => {
    const b = files.get(`blobs/${digest.replace(':', '/')}`);
    if (!b) throw new Error(`${path}: blob ${digest} missing`);
    return b;
  };
  const index = files.get('index.json');
  if (!index) throw new Error(`${path}: no index.json`);
  const out: Rootfs = new Map();
  const visit = async (m: Manifest): Promise<void> => {
    for (const d of m.manifests ?? [])
      await visit(JSON.parse(blob(d.digest).toString()) as Manifest);
    if (!m.config) return;
    const cfg = JSON.parse(blob(m.config.digest).toString()) as ImageConfig;
    const platform = [cfg.os, cfg.architecture, cfg.variant].filter(Boolean).join('/');
    const fs = new Map<string, RootfsEntry>();
    for (const l of m.layers ?? []) await applyLayer(fs, blob(l.digest));
    out.set(platform, fs);
  };
  await visit(JSON.parse(index.toString()) as Manifest);
  return out;
}

/** Mount points of every container (runc's default spec) that a RUN may leave behind. */
const MOUNT_STUBS = new Set(['dev', 'proc', 'sys']);

/**
 * The differences between two sets of root filesystems, as lines (empty when they match):
 * `content` differences (a platform or path on one side only, another type, other bytes or link
 * target), `metadata` differences (mode, owner), and `stubs`: an empty /dev, /proc or /sys on one
 * side only. A rootful BuildKit leaves these mount points in a RUN's layer when the image has none
 * (it cleans only the stubs of the build's own mounts); Kiln's runtime removes them.
 */
export function diffRootfs(
  a: Rootfs,
  b: Rootfs,
  names: [string, string],
): { content: string[]; metadata: string[]; stubs: string[] } {
  const content: string[] = [];
  const metadata: string[] = [];
  const stubs: string[] = [];
  const emptyStub = (fs: Map<string, RootfsEntry>, p: string): boolean =>
    MOUNT_STUBS.has(p) &&
    fs.get(p)?.type === 'directory' &&
    ![...fs.keys()].some((q) => q.startsWith(`${p}/`));
  for (const platform of new Set([...a.keys(), ...b.keys()])) {
    const fa = a.get(platform);
    const fb = b.get(platform);
    if (!fa || !fb) {
      content.push(`${platform}: only in ${fa ? names[0] : names[1]}`);
      continue;
    }
    for (const p of [...new Set([...fa.keys(), ...fb.keys()])].sort()) {
      const ea = fa.get(p);
      const eb = fb.get(p);
      if (!ea || !eb) {
        const only = `${platform} /${p}: only in ${ea ? names[0] : names[1]}`;
        (emptyStub(ea ? fa : fb, p) ? stubs : content).push(only);
      } else if (ea.type !== eb.type || ea.data !== eb.data)
        content.push(`${platform} /${p}: ${ea.type} ${ea.data} vs ${eb.type} ${eb.data}`);
      else if (ea.mode !== eb.mode || ea.uid !== eb.uid || ea.gid !== eb.gid)
        metadata.push(
          `${platform} /${p}: mode ${ea.mode.toString(8)} ${ea.uid}:${ea.gid} vs ${eb.mode.toString(8)} ${eb.uid}:${eb.gid}`,
        );
    }
  }
  return { content, metadata, stubs };
}
