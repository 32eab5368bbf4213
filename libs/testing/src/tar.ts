/** Helpers for layer and filesystem tests: tree snapshots, hand-made tars, overlay mounts. */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstat, readFile, readdir, readlink, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import * as tar from 'tar-stream';

export const exec = promisify(execFile);

/** Mounts overlayfs at `merged` with mount options `options` (`lowerdir=...,upperdir=...`). */
export async function mountOverlay(merged: string, options: string): Promise<void> {
  await exec('mount', ['-t', 'overlay', 'overlay', '-o', options, merged]);
}

export interface NodeInfo {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  size?: number;
  sha?: string;
  target?: string;
  rdev?: number;
  /** First path (sorted) sharing this inode, for files with several links. */
  linkGroup?: string;
}

/** Every path under `root` with its type, metadata and content hash; mtimes in whole seconds. */
export async function snapshotTree(
  root: string,
  opts: { mtimes?: boolean } = {},
): Promise<Record<string, NodeInfo>> {
  const out: Record<string, NodeInfo> = {};
  const inodes = new Map<number, string>();
  async function walk(dir: string, rel: string): Promise<void> {
    for (const name of (await readdir(join(root, dir))).sort()) {
      const p = rel === '' ? name : `${rel}/${name}`;
      const full = join(root, p);
      const st = await lstat(full);
      const info: NodeInfo = {
        type: st.isDirectory()
          ? 'dir'
          : st.isFile()
            ? 'file'
            : st.isSymbolicLink()
              ? 'symlink'
              : st.isFIFO()
                ? 'fifo'
                : st.isCharacterDevice()
                  ? 'char'
                  : 'other',
        mode: st.mode & 0o7777,
        uid: st.uid,
        gid: st.gid,
        mtime: opts.mtimes === false ? 0 : Math.floor(st.mtimeMs / 1000),
      };
      if (st.isFile()) {
        info.size = st.size;
        info.sha = createHash('sha256')
          .update(await readFile(full))
          .digest('hex');
        if (st.nlink > 1) {
          const first = inodes.get(st.ino);
          if (first === undefined) inodes.set(st.ino, p);
          info.linkGroup = first ?? p;
        }
      }
      if (st.isSymbolicLink()) {
        info.target = await readlink(full);
        info.mode = 0;
      }
      if (st.isCharacterDevice()) info.rdev = st.rdev;
      out[p] = info;
      if (st.isDirectory()) await walk(p, p);
    }
  }
  await walk('', '');
  return out;
}

export async function readAll(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of r) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

export interface TarEntry {
  name: string;
  type?: tar.Header['type'];
  content?: string;
  linkname?: string;
  mode?: number;
  devmajor?: number;
  devminor?: number;
}

/** A tar made by hand, for hostile and edge-case layers. */
export async function buildTar(entries: TarEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const done = readAll(pack as unknown as Readable);
  for (const e of entries) {
    const content = e.content === undefined ? undefined : Buffer.from(e.content);
    await new Promise<void>((resolve, reject) => {
      const header = {
        name: e.name,
        type: e.type ?? 'file',
        mode: e.mode ?? (e.type === 'directory' ? 0o755 : 0o644),
        mtime: new Date(1_700_000_000_000),
        linkname: e.linkname ?? '',
        size: content?.length ?? 0,
        devmajor: e.devmajor ?? 0,
        devminor: e.devminor ?? 0,
      };
      const cb = (err?: Error | null): void => (err ? reject(err) : resolve());
      pack.entry(header, content ?? Buffer.alloc(0), cb);
    });
  }
  pack.finalize();
  return done;
}

/** The entry names of a tar (plain or gzip). */
export async function tarNames(data: Buffer): Promise<string[]> {
  const { gunzipSync } = await import('node:zlib');
  const plain = data[0] === 0x1f && data[1] === 0x8b ? gunzipSync(data) : data;
  const names: string[] = [];
  const extract = tar.extract();
  const feed = new Promise<void>((resolve, reject) => {
    Readable.from([plain])
      .pipe(extract as unknown as NodeJS.WritableStream)
      .on('error', reject);
    extract.on('finish', () => resolve());
  });
  for await (const entry of extract) {
    names.push(
      entry.header.type === 'link'
        ? `${entry.header.name} => ${entry.header.linkname}`
        : entry.header.name,
    );
    entry.resume();
  }
  await feed;
  return names;
}

/** Bytes of the regular files under `dir` (what an unpack left on disk). */
export async function treeBytes(dir: string): Promise<number> {
  let n = 0;
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true }))
    if (e.isFile()) n += (await stat(join(e.parentPath, e.name))).size;
  return n;
}
