import type { BigIntStats } from 'node:fs';
import { createReadStream } from 'node:fs';
import { join } from 'node:path';
import { pipeline } from 'node:stream';
import type { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { KilnError } from '@kiln/protocol';
import { DigestingStream } from '@kiln/store';
import type { BlobStore, Digest } from '@kiln/store';
import type * as tar from 'tar-stream';
import { readTreeXattrs } from './xattr.js';
import type { Xattrs } from './xattr.js';
import { compareChanges, overlayChanges, overlayLayerChanges } from './changes.js';
import type { Change } from './changes.js';
import { MediaTypes, coalescer, compressor } from './compression.js';
import type { Compression } from './compression.js';
import { LayerError, LayerErrorCode } from './errors.js';
import { paxXattrHeader } from './pax.js';
import { TarOut } from './tar-out.js';
import { SMALL_FILE, lstatBigSync, readSmallSync, readlinkSync, yielder } from './sync-fs.js';

/** What to diff. */
export type DiffSource =
  | {
      kind: 'overlay';
      /** The snapshot's overlayfs upper directory. */
      upperDir: string;
      /** The parent's merged read-only view (a single lowerdir is its own view); omit for a base snapshot. */
      lowerDir?: string;
      /**
       * The snapshot's own merged view (mounted, read-only is enough); required with `lowerDir`:
       * it tells an opaque directory from a partly changed one without reading xattrs.
       */
      mergedDir?: string;
      /**
       * Instead of `lowerDir` and `mergedDir`, nothing mounted: the parent's overlay lowerdirs,
       * top first, read as overlayfs reads them (see `overlayLayerChanges`).
       */
      lowerLayers?: readonly string[];
      /**
       * With `lowerLayers`: the attribute that marks an opaque directory, `trusted.overlay.opaque`
       * (the default) or `user.overlay.opaque` when the snapshots are mounted with `userxattr`.
       */
      opaqueXattr?: string;
    }
  | {
      kind: 'compare';
      /** The parent tree; omit to diff against an empty tree. */
      baseDir?: string;
      /** The new tree. */
      newDir: string;
    };

export interface DiffOptions {
  /** Default `gzip`. `zstd` needs node's zlib zstd or the `zstd` command. */
  compression?: Compression;
  /** Compression level (gzip 1-9, zstd 1-19); default the codec's default. */
  level?: number;
  /**
   * SOURCE_DATE_EPOCH in seconds: mtimes later than it are clamped to it, as BuildKit's
   * `rewrite-timestamp=true` does. Without it, mtimes are kept (whole seconds).
   */
  sourceDateEpoch?: number;
  /** Docker media types instead of OCI ones. Default false. */
  dockerMediaTypes?: boolean;
}

export interface LayerDescriptor {
  /** sha256 of the uncompressed tar (the image config's `rootfs.diff_ids`). */
  diffID: Digest;
  /** sha256 of the blob as stored (compressed). */
  digest: Digest;
  /** Size of the blob as stored. */
  size: number;
  mediaType: string;
  /** Size of the uncompressed tar. */
  uncompressedSize: number;
}

export interface LayerStream {
  /** The layer blob; read it to the end, exactly once. */
  stream: Readable;
  /** Resolves once `stream` has been read to the end; rejects if producing the layer failed. */
  done: Promise<LayerDescriptor>;
  mediaType: string;
}

const WHITEOUT_PREFIX = '.wh.';
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const WHITEOUT_OPAQUE = '.wh..wh..opq';

/** The media type a layer produced with these options has. */
export function layerMediaType(opts: DiffOptions = {}): string {
  return MediaTypes[opts.dockerMediaTypes ? 'docker' : 'oci'][opts.compression ?? 'gzip'];
}

/**
 * Produces an OCI layer (image-spec `layer.md`) from a snapshot, streamed.
 *
 * Deletions become `.wh.<name>`, opaque directories `.wh..wh..opq` right after the directory's
 * own entry, files sharing an inode become one file plus hardlink entries, and the parents of
 * every change are included. The output is deterministic: entries in byte-wise path order, no
 * user/group names, no atime/ctime, whiteouts stamped with `sourceDateEpoch` (or 0), mtimes kept
 * or clamped; the same tree change yields the same bytes. Extended attributes are recorded as
 * PAX `SCHILY.xattr.*` records, byte-exact and sorted (read with one `getfattr` over the tree;
 * overlayfs's `trusted.overlay.*` and `security.selinux` are left out); sockets are skipped as in
 * BuildKit.
 *
 * Throws a {@link LayerError} at once when the codec is not available
 * (`LAYER_UNSUPPORTED_COMPRESSION`) or an overlay source lacks `mergedDir` (`LAYER_INVALID`);
 * later failures (unreadable tree) error `stream` and reject `done`.
 */
export function diffLayer(source: DiffSource, opts: DiffOptions = {}): LayerStream {
  const mediaType = layerMediaType(opts);
  if (
    source.kind === 'overlay' &&
    source.lowerDir !== undefined &&
    source.mergedDir === undefined
  ) {
    throw new LayerError(LayerErrorCode.Invalid, 'an overlay diff with a lowerDir needs mergedDir');
  }
  if (source.kind === 'overlay' && source.lowerDir !== undefined && source.lowerLayers) {
    throw new LayerError(
      LayerErrorCode.Invalid,
      'an overlay diff takes either a lowerDir or lowerLayers, not both',
    );
  }
  const out = new TarOut();
  // Throws at once when the codec is not available, before anything starts.
  const { stream, done } = layerOfTar(out.stream, opts);

  void (async () => {
    try {
      const root = source.kind === 'overlay' ? source.upperDir : source.newDir;
      // One getfattr over the tree while the changes are found (two first for a comparison,
      // whose xattr-only changes count).
      let xattrs: Map<string, Xattrs>;
      let changes: Change[];
      if (source.kind === 'overlay') {
        [xattrs, changes] = await Promise.all([
          readTreeXattrs(root),
          source.lowerLayers
            ? overlayLayerChanges(
                source.upperDir,
                source.lowerLayers,
                source.opaqueXattr ?? 'trusted.overlay.opaque',
              )
            : overlayChanges(source.upperDir, source.lowerDir, source.mergedDir),
        ]);
      } else {
        const [base, next] = await Promise.all([
          source.baseDir === undefined ? new Map<string, Xattrs>() : readTreeXattrs(source.baseDir),
          readTreeXattrs(root),
        ]);
        xattrs = next;
        changes = await compareChanges(source.baseDir, source.newDir, { base, next });
      }
      await new TarWriter(out, root, opts.sourceDateEpoch, xattrs).write(changes);
      await out.end();
    } catch (err) {
      const e =
        err instanceof KilnError
          ? err
          : new LayerError(
              LayerErrorCode.Io,
              `producing layer: ${err instanceof Error ? err.message : String(err)}`,
              {
                cause: err,
              },
            );
      out.stream.destroy(e);
      stream.destroy(e);
    }
  })();
  return { stream, done, mediaType };
}

/**
 * The layer blob of an uncompressed layer tar (one {@link diffLayer} made with `compression:
 * 'none'` and kept): compressed as `opts` says, with its diffID and digest. The same bytes as
 * diffing the source again with those options.
 */
export function layerOfTar(tar: Readable, opts: DiffOptions = {}): LayerStream {
  const mediaType = layerMediaType(opts);
  const diffHasher = new DigestingStream();
  let stream: Readable;
  let blobHasher = diffHasher;
  if (opts.compression === 'none') {
    // The blob is the tar: one hash, no stages that pass the bytes on unchanged (each costs
    // event-loop turns per chunk and at the end, on the critical path of every diffID).
    stream = pipeline(tar, diffHasher, () => undefined);
  } else {
    const comp = compressor(opts.compression ?? 'gzip', opts.level);
    blobHasher = new DigestingStream();
    stream = pipeline(tar, diffHasher, coalescer(), comp, blobHasher, () => undefined);
  }
  const done = (async (): Promise<LayerDescriptor> => {
    await finished(stream);
    return {
      diffID: diffHasher.digest,
      digest: blobHasher.digest,
      size: blobHasher.size,
      mediaType,
      uncompressedSize: diffHasher.size,
    };
  })();
  done.catch(() => undefined);
  return { stream, done, mediaType };
}

/** Puts a layer straight into `store`; its descriptor once stored. */
export async function putLayer(store: BlobStore, layer: LayerStream): Promise<LayerDescriptor> {
  const [stored, desc] = await Promise.all([
    store.put(undefined, layer.stream, { mediaType: layer.mediaType }),
    layer.done,
  ]);
  if (stored.digest !== desc.digest || stored.size !== desc.size) {
    throw new LayerError(LayerErrorCode.Io, 'store and layer writer disagree on the blob', {
      details: { stored: stored.digest, produced: desc.digest },
    });
  }
  return desc;
}

/** Diffs `source` straight into `store` and returns the layer's descriptor. */
export async function writeLayer(
  store: BlobStore,
  source: DiffSource,
  opts: DiffOptions = {},
): Promise<LayerDescriptor> {
  return putLayer(store, diffLayer(source, opts));
}

type Header = tar.Header;

class TarWriter {
  private readonly emittedDirs = new Set<string>();
  private readonly inodeSource = new Map<string, string>();
  private readonly inodeRefs = new Map<string, string[]>();
  private readonly whiteoutTime: Date;

  constructor(
    private readonly out: TarOut,
    private readonly root: string,
    private readonly sourceDateEpoch: number | undefined,
    /** Extended attributes by root-relative path (see `readTreeXattrs`). */
    private readonly xattrs: ReadonlyMap<string, Xattrs>,
  ) {
    this.whiteoutTime = new Date((sourceDateEpoch ?? 0) * 1000);
  }

  async write(changes: Change[]): Promise<void> {
    const tick = yielder();
    for (const ch of changes) {
      await tick();
      switch (ch.kind) {
        case 'delete': {
          await this.includeParents(ch.path);
          const slash = ch.path.lastIndexOf('/');
          const name = `${ch.path.slice(0, slash + 1)}${WHITEOUT_PREFIX}${ch.path.slice(slash + 1)}`;
          await this.entry(this.whiteoutHeader(name));
          break;
        }
        case 'opaque':
          await this.includeParents(`${ch.path}/${WHITEOUT_OPAQUE}`);
          await this.entry(this.whiteoutHeader(`${ch.path}/${WHITEOUT_OPAQUE}`));
          break;
        default:
          await this.file(ch.path, ch.stat!, ch.kind === 'unchanged-link');
      }
    }
  }

  private whiteoutHeader(name: string): Header {
    return {
      name,
      type: 'file',
      size: 0,
      mode: 0,
      uid: 0,
      gid: 0,
      uname: '',
      gname: '',
      mtime: this.whiteoutTime,
      linkname: '',
      devmajor: 0,
      devminor: 0,
    };
  }

  private async file(path: string, st: BigIntStats, unchanged: boolean): Promise<void> {
    let links: string[] = [];
    // The type from the mode as a number: BigIntStats' isFile() & co. make two BigInts a call.
    const type = Number(st.mode) & S_IFMT;
    const dir = type === S_IFDIR;
    if (type === S_IFREG && st.nlink > 1n) {
      const key = `${st.dev}:${st.ino}`;
      const src = this.inodeSource.get(key);
      if (src !== undefined) {
        const h = this.header(path, st);
        await this.includeParents(path);
        if (h !== undefined) await this.entry({ ...h, type: 'link', linkname: src, size: 0 });
        return;
      }
      if (unchanged) {
        this.inodeRefs.set(key, [...(this.inodeRefs.get(key) ?? []), path]);
        return;
      }
      this.inodeSource.set(key, path);
      links = this.inodeRefs.get(key) ?? [];
      this.inodeRefs.delete(key);
    } else if (unchanged) {
      return;
    }
    if (dir && this.emittedDirs.has(path)) return;
    const header = this.header(path, st);
    if (header === undefined) return;
    await this.includeParents(path);
    if (header.type === 'file' && header.size > 0) {
      await this.entry(header, join(this.root, path));
    } else {
      await this.entry(header);
    }
    if (dir) this.emittedDirs.add(path);
    for (const extra of links) {
      await this.includeParents(extra);
      await this.entry({ ...header, name: extra, type: 'link', linkname: path, size: 0 });
    }
  }

  /** Writes the directories above `path` that are not in the layer yet. */
  private async includeParents(path: string): Promise<void> {
    // Its directory in the layer means every directory above it is (they go in first).
    const slash = path.lastIndexOf('/');
    if (slash < 0 || this.emittedDirs.has(path.slice(0, slash))) return;
    const parts = path.split('/');
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/');
      if (this.emittedDirs.has(dir)) continue;
      const st = lstatBigSync(join(this.root, dir));
      const header = this.header(dir, st);
      if (header === undefined || header.type !== 'directory') {
        throw new LayerError(LayerErrorCode.Io, 'parent of a change is not a directory', {
          entry: dir,
        });
      }
      await this.entry(header);
      this.emittedDirs.add(dir);
    }
  }

  private mtime(st: BigIntStats): Date {
    let sec = Number(st.mtimeNs / 1_000_000_000n);
    if (this.sourceDateEpoch !== undefined && sec > this.sourceDateEpoch)
      sec = this.sourceDateEpoch;
    return new Date(sec * 1000);
  }

  private header(path: string, st: BigIntStats): Header | undefined {
    const mode = Number(st.mode);
    const type = mode & S_IFMT;
    // Each header a literal of one shape: a spread that overrides a key (`{...base, size}`) made
    // V8 build a dictionary object, ~5 µs an entry, most of a many-file layer's header time.
    const h = (
      kind: Header['type'],
      name = path,
      size = 0,
      linkname = '',
      devmajor = 0,
      devminor = 0,
    ): Header => ({
      name,
      type: kind,
      mode: mode & 0o7777,
      uid: Number(st.uid),
      gid: Number(st.gid),
      uname: '',
      gname: '',
      mtime: this.mtime(st),
      size,
      linkname,
      devmajor,
      devminor,
    });
    if (type === S_IFREG) return h('file', path, Number(st.size));
    if (type === S_IFDIR) return h('directory', `${path}/`);
    if (type === S_IFLNK) return h('symlink', path, 0, readlinkSync(join(this.root, path)));
    if (st.isFIFO()) return h('fifo');
    if (st.isCharacterDevice() || st.isBlockDevice()) {
      const rdev = st.rdev;
      return h(
        st.isCharacterDevice() ? 'character-device' : 'block-device',
        path,
        0,
        '',
        Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn)),
        Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn)),
      );
    }
    // Sockets and unknown types are not representable in a layer.
    return undefined;
  }

  private async entry(header: Header, file?: string): Promise<void> {
    const xattrs = this.xattrs.get(header.name.replace(/\/$/, ''));
    if (xattrs !== undefined) {
      // Copied: the same header object may be reused for hardlinks with their own names.
      header = { ...header };
      const pax = paxXattrHeader(header, xattrs);
      // Right before the entry's own header.
      if (pax !== undefined) await this.out.push(pax);
    }
    if (file === undefined) {
      await this.out.entry(header);
      return;
    }
    if ((header.size ?? 0) <= SMALL_FILE) {
      // Read whole in one call: a stream costs several thread-pool round trips per file.
      const body = readSmallSync(file, header.size ?? 0);
      if (body === undefined) {
        throw new LayerError(LayerErrorCode.Io, 'a file changed size while its layer was made', {
          entry: header.name,
        });
      }
      await this.out.entry(header, body);
      return;
    }
    await this.out.entry(header);
    const input = createReadStream(file);
    try {
      for await (const chunk of input) await this.out.write(chunk as Buffer);
    } finally {
      input.destroy();
    }
    await this.out.endBody();
  }
}
