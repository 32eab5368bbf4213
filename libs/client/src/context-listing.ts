/**
 * A local directory's listing, as a session sends it (a content manifest): the entries under the
 * directory, walked with the op's include/exclude patterns as fsutil walks, each regular file
 * with its content digest (from the digest cache, else hashed after the walk).
 *
 * Kept compact (a 5,000-file context is a few arrays, not 5,000 objects with a Long each): the
 * ContextEntry messages are made only for the chunks sent, and a fully cached build, whose farm
 * already holds this very listing (`ifChangedFrom`), sends none. A directory is read with one
 * native call (`@kiln/sys` `lstatDir`: readdir, sort and lstats), or with `readdirSync` and
 * `lstatSync` where the addon does not load.
 */
import { createHash } from 'node:crypto';
import { lstatSync, readdirSync, readlinkSync } from 'node:fs';
import type { BigIntStats } from 'node:fs';
// The pattern matcher alone, not the whole frontend (the client path stays light).
import { PatternMatcher } from '@kiln/dockerfile/patterns';
import { Long } from '@kiln/protocol';
import type { control } from '@kiln/protocol';
import { hasAddon, lstatDir } from '@kiln/sys';
import $protobuf from 'protobufjs/minimal.js';
import type { DirStats } from '@kiln/sys';
import type { RootDigests } from './hash-cache.js';

type ContextEntry = NonNullable<Parameters<typeof control.ContextEntry.create>[0]>;

const { Writer } = $protobuf;
const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
/** Numbers per entry in `Listing.nums` and `DirStats.nums`. */
const NUMS = 6;

/** A manifest request's directory and patterns (what a listing depends on). */
export interface ManifestPatterns {
  dir?: string | null;
  includePatterns?: readonly string[] | null;
  excludePatterns?: readonly string[] | null;
  followPaths?: readonly string[] | null;
}

/** What the digest cache compares: `size\tmtime_ns\tctime_ns\tino` (as `lstatDir`'s stamps). */
export const stampOf = (st: BigIntStats): string =>
  `${st.size}\t${st.mtimeNs}\t${st.ctimeNs}\t${st.ino}`;

/** UTF-8 byte order (Go's string order, as `lstatDir` sorts). */
const byteOrder = (a: string, b: string): number => Buffer.compare(Buffer.from(a), Buffer.from(b));

/** {@link lstatDir} with Node's calls: the same answer, an object and a call or two per entry. */
export function lstatDirPortable(abs: string): DirStats {
  const names = readdirSync(abs).sort(byteOrder);
  const nums = new Float64Array(names.length * NUMS);
  const stamps: string[] = [];
  const links: string[] = [];
  const sep = abs.endsWith('/') ? '' : '/';
  names.forEach((name, i) => {
    const st = lstatSync(abs + sep + name, { bigint: true });
    nums.set(
      [
        Number(st.mode),
        Number(st.uid),
        Number(st.gid),
        Number(st.size),
        Number(st.mtimeNs & 0xffffffffn),
        Number(BigInt.asIntN(32, st.mtimeNs >> 32n)),
      ],
      i * NUMS,
    );
    stamps.push(stampOf(st));
    if (st.isSymbolicLink()) links.push(readlinkSync(abs + sep + name));
  });
  return { names, stamps, links, nums };
}

let native: boolean | undefined;
/** One directory's entries: the native call where the addon loads. */
function readDir(abs: string): DirStats {
  native ??= hasAddon();
  return native ? lstatDir(abs) : lstatDirPortable(abs);
}

/**
 * A `SessionMessage { id, manifest }` from the `ContextManifest` bytes of
 * {@link Listing.manifestChunks}.
 */
export function sessionManifestMessage(id: number | bigint, manifest: Buffer): Buffer {
  const w = Writer.create();
  if (id !== 0 && id !== 0n) {
    const big = BigInt(id);
    w.uint32(0x08).uint64(longBits(Number(big & 0xffffffffn), Number(big >> 32n))); // id (1)
  }
  w.uint32(0x22).uint32(manifest.length); // manifest (4): tag, then the length
  return Buffer.concat([w.finish(), manifest]);
}

/** A 64-bit integer from its 32-bit halves, as protobufjs's writer takes it. */
const longBits = (low: number, high: number): Int64 => ({
  low: low >>> 0,
  high: high | 0,
  unsigned: false,
});
type Int64 = Parameters<$protobuf.Writer['int64']>[0];

/** One directory's walk (see the file's comment): entry `i` is `paths[i]`, `nums[6i..6i+5]`, ... */
export class Listing {
  /** Paths relative to the directory, `/`-separated, a directory before what is below it. */
  readonly paths: string[] = [];
  /** Six numbers per entry: mode, uid, gid, size, mtime (ns) as its low and high 32 bits. */
  readonly nums: number[] = [];
  /** A regular file's content digest ('' until hashed); '' for others. */
  readonly digests: string[] = [];
  /** A symlink's target; '' for others. */
  readonly links: string[] = [];
  /** The regular files' paths (the only ones a session serves). */
  readonly files: string[] = [];
  /** Regular files without a cached digest, hashed after the walk. */
  readonly toHash: { index: number; abs: string; stamp: string; size: number }[] = [];

  /** `cache`: the directory's digests, where hashed files go. */
  constructor(readonly cache: RootDigests) {}

  get length(): number {
    return this.paths.length;
  }

  /** Entries `[from, to)` as the manifest sends them. */
  entries(from: number, to: number): ContextEntry[] {
    const out: ContextEntry[] = [];
    const n = this.nums;
    for (let i = from; i < Math.min(to, this.paths.length); i++) {
      const o = i * NUMS;
      const e: ContextEntry = {
        path: this.paths[i]!,
        mode: n[o]!,
        uid: n[o + 1]!,
        gid: n[o + 2]!,
        size: n[o + 3]!,
        mtimeUnixNano: Long.fromBits(n[o + 4]! | 0, n[o + 5]! | 0, false),
      };
      if (this.digests[i]) e.digest = this.digests[i]!;
      if (this.links[i]) e.linkname = this.links[i]!;
      out.push(e);
    }
    return out;
  }

  #digest: string | undefined;
  #chunks: Buffer[] | undefined;

  /**
   * The listing as `ContextManifest` messages of at most `per` entries each (protobuf bytes,
   * written field by field with protobufjs's Writer: no ContextEntry objects are made, which
   * took ~3x as long, most of a changed build's manifest time), the
   * last with `digest()`, the others with `more`; one empty message for an empty listing. Made
   * once (all files hashed).
   */
  manifestChunks(per: number): Buffer[] {
    if (this.#chunks) return this.#chunks;
    const digest = this.digest();
    const out: Buffer[] = [];
    for (let i = 0; i === 0 || i < this.length; i += per) {
      const last = i + per >= this.length;
      out.push(this.#encodeChunk(i, Math.min(i + per, this.length), last ? digest : undefined));
    }
    return (this.#chunks = out);
  }

  /** ContextManifest { entries: [from, to), more: !digest, digest }. */
  #encodeChunk(from: number, to: number, digest: string | undefined): Buffer {
    const w = Writer.create();
    const n = this.nums;
    for (let i = from; i < to; i++) {
      const o = i * NUMS;
      w.uint32(0x0a).fork(); // entries (1), a ContextEntry:
      w.uint32(0x0a).string(this.paths[i]!); // path (1)
      w.uint32(0x10).uint32(n[o]!); // mode (2)
      w.uint32(0x18).uint32(n[o + 1]!); // uid (3)
      w.uint32(0x20).uint32(n[o + 2]!); // gid (4)
      w.uint32(0x28).int64(n[o + 3]!); // size (5)
      if (this.digests[i]) w.uint32(0x32).string(this.digests[i]!); // digest (6)
      if (this.links[i]) w.uint32(0x3a).string(this.links[i]!); // linkname (7)
      w.uint32(0x40).int64(longBits(n[o + 4]!, n[o + 5]!)); // mtime_unix_nano (8)
      w.ldelim();
    }
    if (digest === undefined)
      w.uint32(0x10).bool(true); // more (2)
    else w.uint32(0x1a).string(digest); // digest (3)
    return Buffer.from(w.finish());
  }

  /**
   * The digest of the listing: every field of every entry, in order (`ifChangedFrom`). Only this
   * client compares it with what it made before, so its form is its own: eight fields an entry,
   * each ended by a NUL (which no path or link target holds). Made once, when every file is
   * hashed (`toHash` empty: a listing with files still to hash throws).
   */
  digest(): string {
    if (this.toHash.length > 0) throw new Error('the listing has files not hashed yet');
    return (this.#digest ??= this.#make());
  }

  #make(): string {
    const h = createHash('sha256');
    const n = this.nums;
    let buf = '';
    for (let i = 0; i < this.paths.length; i++) {
      const o = i * NUMS;
      buf += `${this.paths[i]}\0${n[o]}\0${n[o + 1]}\0${n[o + 2]}\0${n[o + 3]}\0${n[o + 4]}:${n[o + 5]}\0${this.digests[i]}\0${this.links[i]}\0`;
      if (buf.length > 64 * 1024) {
        h.update(buf);
        buf = '';
      }
    }
    return `sha256:${h.update(buf).digest('hex')}`;
  }

  #push(path: string, d: DirStats, i: number, digest: string, link: string): void {
    this.paths.push(path);
    for (let k = i * NUMS; k < (i + 1) * NUMS; k++) this.nums.push(d.nums[k]!);
    this.digests.push(digest);
    this.links.push(link);
  }

  #pop(): void {
    this.paths.pop();
    this.nums.length -= NUMS;
    this.digests.pop();
    this.links.pop();
  }

  /**
   * Walks `root` (absolute, resolved) with the patterns of `r`. With `maxEntries` (a walk ahead of
   * its request), yields to the event loop after each directory and gives up (undefined) past
   * that many entries or once `ended()` says so.
   */
  static async walk(
    root: string,
    r: ManifestPatterns,
    cache: RootDigests,
    o: { maxEntries?: number; ended?: () => boolean } = {},
  ): Promise<Listing | undefined> {
    const includes = [...(r.includePatterns ?? []), ...(r.followPaths ?? [])];
    const excludes = r.excludePatterns ?? [];
    const inc = includes.length ? new PatternMatcher(includes) : undefined;
    const exc = excludes.length ? new PatternMatcher(excludes) : undefined;
    const l = new Listing(cache);
    const { maxEntries } = o;
    const ahead = maxEntries !== undefined;
    let seen = 0;
    await cache.load();
    // Returns whether anything at or below `rel` was listed; undefined when given up.
    const walk = async (abs: string, rel: string): Promise<boolean | undefined> => {
      if (ahead) {
        await new Promise<void>((res) => setImmediate(res));
        if (o.ended?.()) return undefined;
      }
      // Synchronous: a few µs an entry, against a thread-pool round trip (the client has nothing
      // else to do meanwhile but answer the farm, which waits for this list).
      const d = readDir(abs);
      const { names } = d;
      seen += names.length;
      if (ahead && seen > maxEntries) return undefined;
      // `abs` is absolute and clean, names hold no `/`: concatenation is what join would give.
      const sep = abs.endsWith('/') ? '' : '/';
      let any = false;
      let nextLink = 0;
      for (let i = 0; i < names.length; i++) {
        const name = names[i]!;
        const type = d.nums[i * NUMS]! & S_IFMT;
        const link = type === S_IFLNK ? d.links[nextLink++]! : '';
        const r2 = rel ? `${rel}/${name}` : name;
        const excluded = exc?.matchesOrParentMatches(r2) ?? false;
        const included = !inc || inc.matchesOrParentMatches(r2);
        if (type === S_IFDIR) {
          // An excluded directory is still walked when a later `!pattern` may re-include below.
          if (excluded && !exc?.exclusions) continue;
          // Listed before what is below it; taken back if neither it nor anything below is
          // listed (then nothing was listed after it).
          l.#push(r2, d, i, '', '');
          const below = await walk(abs + sep + name, r2);
          if (below === undefined) return undefined;
          if ((included && !excluded) || below) any = true;
          else l.#pop();
          continue;
        }
        if (excluded || !included) continue;
        if (type === S_IFREG) {
          const stamp = d.stamps[i]!;
          const digest = cache.get(r2, stamp) ?? '';
          if (!digest)
            l.toHash.push({
              index: l.length,
              abs: abs + sep + name,
              stamp,
              size: d.nums[i * NUMS + 3]!,
            });
          l.#push(r2, d, i, digest, '');
          l.files.push(r2);
        } else if (type === S_IFLNK) {
          l.#push(r2, d, i, '', link);
        } else continue; // sockets, fifos, devices: never part of a context
        any = true;
      }
      return any;
    };
    if ((await walk(root, '')) === undefined) return undefined;
    return l;
  }
}
