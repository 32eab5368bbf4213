import type { BigIntStats } from 'node:fs';
import { open } from 'node:fs/promises';
import { lstatBigSync, lstatMaybeSync, readdirSync, readlinkSync, yielder } from './sync-fs.js';
import { join } from 'node:path';
import { lxattrs } from '@kiln/sys';
import type { Xattrs } from './xattr.js';
import { LayerError, LayerErrorCode } from './errors.js';

/**
 * One filesystem change, in the order a layer writes it. `unchanged-link` is an unchanged file
 * that shares its inode with a changed one: it is written as a hardlink so the link survives.
 */
export interface Change {
  /** Path relative to the tree root, `/`-separated, no leading slash. */
  path: string;
  kind: 'add' | 'modify' | 'delete' | 'opaque' | 'unchanged-link';
  /** lstat of the path in the new tree (not for delete/opaque). */
  stat?: BigIntStats;
}

const S_IFMT = 0o170000n;
const S_IFCHR = 0o020000n;

/**
 * Byte-wise order of the UTF-8 encodings, as Go's sort.Strings (BuildKit/containerd walk order),
 * not UTF-16 order: code point order, which UTF-8 keeps. UTF-16 code units differ from it only
 * where a surrogate (U+D800-U+DFFF, half of a code point above U+FFFF) meets a unit of
 * U+E000-U+FFFF: the first differing units are compared with surrogates moved above those. No
 * allocation (a sort of a large directory compares each name ~log2(n) times).
 */
export function compareNames(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x === y) continue;
    if (x >= 0xd800 && y >= 0xd800) {
      x = x >= 0xe000 ? x - 0x800 : x + 0x2000;
      y = y >= 0xe000 ? y - 0x800 : y + 0x2000;
    }
    return x - y;
  }
  return a.length - b.length;
}

function sortedNames(dir: string): string[] {
  return readdirSync(dir).sort(compareNames);
}

function rel(parent: string, name: string): string {
  return parent === '' ? name : `${parent}/${name}`;
}

/** Extended attributes of both trees, by root-relative path (see `readTreeXattrs`). */
export interface TreeXattrs {
  base: ReadonlyMap<string, Xattrs>;
  next: ReadonlyMap<string, Xattrs>;
}

const NO_XATTRS: TreeXattrs = { base: new Map(), next: new Map() };

/**
 * Changes from `base` to `next`, found by walking both trees (the copying snapshotter, or any two
 * directories). Follows continuity's `fs.Changes`: directories count as modified only when their
 * mode, owner or extended attributes changed (their parents are written anyway when a child
 * changes); files when type, mode, owner, size, symlink target, extended attributes or mtime
 * differ, comparing contents when both mtimes have zero nanoseconds (a copy that truncated
 * them). Continuity compares only `security.capability`; every attribute that a layer carries is
 * compared here. Without `xattrs`, attributes are not compared.
 */
export async function compareChanges(
  base: string | undefined,
  next: string,
  xattrs: TreeXattrs = NO_XATTRS,
): Promise<Change[]> {
  const out: Change[] = [];
  await compareDir({ base, next, xattrs, tick: yielder() }, '', base !== undefined, out);
  return out;
}

interface CompareTrees {
  base: string | undefined;
  next: string;
  xattrs: TreeXattrs;
  tick: () => Promise<void> | undefined;
}

function sameXattrs(t: CompareTrees, p: string): boolean {
  const a = t.xattrs.base.get(p);
  const b = t.xattrs.next.get(p);
  if (a === undefined || b === undefined) return a === b;
  if (a.size !== b.size) return false;
  for (const [n, v] of a) if (!b.get(n)?.equals(v)) return false;
  return true;
}

async function compareDir(
  trees: CompareTrees,
  dir: string,
  baseHas: boolean,
  out: Change[],
): Promise<void> {
  const { base, next } = trees;
  const nextNames = sortedNames(join(next, dir));
  let baseNames: string[] = [];
  if (baseHas && base !== undefined) {
    const bst = lstatMaybeSync(join(base, dir));
    if (bst?.isDirectory()) baseNames = sortedNames(join(base, dir));
  }
  const names = [...new Set([...nextNames, ...baseNames])].sort(compareNames);
  const inNext = new Set(nextNames);
  const inBase = new Set(baseNames);
  for (const name of names) {
    await trees.tick();
    const p = rel(dir, name);
    if (!inNext.has(name)) {
      out.push({ path: p, kind: 'delete' });
      continue;
    }
    const ns = lstatBigSync(join(next, p));
    const bs = inBase.has(name) && base !== undefined ? lstatMaybeSync(join(base, p)) : undefined;
    if (bs === undefined) {
      out.push({ path: p, kind: 'add', stat: ns });
      if (ns.isDirectory()) await compareDir(trees, p, false, out);
      continue;
    }
    if ((bs.mode & S_IFMT) !== (ns.mode & S_IFMT)) {
      out.push({ path: p, kind: 'modify', stat: ns });
      if (ns.isDirectory()) await compareDir(trees, p, false, out);
      continue;
    }
    if (ns.isDirectory()) {
      if (bs.mode !== ns.mode || bs.uid !== ns.uid || bs.gid !== ns.gid || !sameXattrs(trees, p))
        out.push({ path: p, kind: 'modify', stat: ns });
      await compareDir(trees, p, true, out);
      continue;
    }
    if (!sameXattrs(trees, p) || !(await sameFile(bs, ns, join(base!, p), join(next, p))))
      out.push({ path: p, kind: 'modify', stat: ns });
    else if (ns.isFile() && ns.nlink > 1n) out.push({ path: p, kind: 'unchanged-link', stat: ns });
  }
}

async function sameFile(a: BigIntStats, b: BigIntStats, pa: string, pb: string): Promise<boolean> {
  if (a.mode !== b.mode || a.uid !== b.uid || a.gid !== b.gid || a.rdev !== b.rdev) return false;
  if (a.size !== b.size) return false;
  if (a.isSymbolicLink()) return readlinkSync(pa) === readlinkSync(pb);
  const sa = a.mtimeNs / 1_000_000_000n;
  const sb = b.mtimeNs / 1_000_000_000n;
  if (sa !== sb) return false;
  const na = a.mtimeNs % 1_000_000_000n;
  const nb = b.mtimeNs % 1_000_000_000n;
  if (na === 0n && nb === 0n) {
    if (a.size === 0n || !a.isFile()) return true;
    return sameContent(pa, pb);
  }
  return na === nb;
}

async function sameContent(pa: string, pb: string): Promise<boolean> {
  const [fa, fb] = await Promise.all([open(pa, 'r'), open(pb, 'r')]);
  try {
    const size = 64 * 1024;
    const ba = Buffer.alloc(size);
    const bb = Buffer.alloc(size);
    for (;;) {
      const [ra, rb] = await Promise.all([fa.read(ba, 0, size), fb.read(bb, 0, size)]);
      if (ra.bytesRead !== rb.bytesRead) return false;
      if (ra.bytesRead === 0) return true;
      if (!ba.subarray(0, ra.bytesRead).equals(bb.subarray(0, rb.bytesRead))) return false;
    }
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
}

/** An overlayfs whiteout: a character device 0/0. */
export function isWhiteout(st: BigIntStats): boolean {
  return (st.mode & S_IFMT) === S_IFCHR && st.rdev === 0n;
}

/**
 * Changes recorded in an overlayfs upper directory, against `lower` (the parent snapshot's
 * merged, read-only view, or undefined for a snapshot without parent), with `merged` the
 * snapshot's own merged view (needed whenever `lower` is given).
 *
 * Whiteouts (char devices 0/0) become deletes when the lower has the path. An opaque directory
 * is marked only by the `trusted.overlay.opaque` xattr (which node reads only through a
 * `getfattr` process), so it is told apart from a partly changed one through the merged view: a
 * lower child that has no upper entry (nor whiteout) is visible in `merged` unless its directory
 * is opaque.
 * Where every lower child has an upper entry, opaque or not gives the same merged view, and the
 * recursion below marks any deeper directory whose lower content is hidden, so the layer is the
 * same. The snapshotter must mount without `redirect_dir` and `metacopy`, as BuildKit's overlay
 * differ requires.
 */
export async function overlayChanges(
  upper: string,
  lower: string | undefined,
  merged: string | undefined,
): Promise<Change[]> {
  const out: Change[] = [];
  await overlayDir({ upper, lower, merged, tick: yielder() }, '', lower !== undefined, out);
  return out;
}

interface OverlayDirs {
  upper: string;
  lower: string | undefined;
  merged: string | undefined;
  tick: () => Promise<void> | undefined;
}

async function overlayDir(
  dirs: OverlayDirs,
  dir: string,
  lowerHas: boolean,
  out: Change[],
): Promise<void> {
  const { upper, lower } = dirs;
  for (const name of sortedNames(join(upper, dir))) {
    await dirs.tick();
    const p = rel(dir, name);
    const us = lstatBigSync(join(upper, p));
    const ls = lowerHas && lower !== undefined ? lstatMaybeSync(join(lower, p)) : undefined;
    if (isWhiteout(us)) {
      if (ls !== undefined) out.push({ path: p, kind: 'delete' });
      continue;
    }
    out.push({ path: p, kind: ls === undefined ? 'add' : 'modify', stat: us });
    if (!us.isDirectory()) continue;
    if (ls?.isDirectory()) {
      const opaque = isOpaque(dirs, p);
      if (opaque) out.push({ path: p, kind: 'opaque' });
      await overlayDir(dirs, p, !opaque, out);
    } else {
      await overlayDir(dirs, p, false, out);
    }
  }
}

/** Whether upper dir `p` hides the lower one: some lower child without upper entry is not visible. */
function isOpaque(dirs: OverlayDirs, p: string): boolean {
  const upperNames = new Set(readdirSync(join(dirs.upper, p)));
  for (const n of readdirSync(join(dirs.lower!, p))) {
    if (upperNames.has(n)) continue;
    if (dirs.merged === undefined) {
      throw new LayerError(
        LayerErrorCode.Invalid,
        'an overlay diff with a lowerDir needs mergedDir',
      );
    }
    return lstatMaybeSync(join(dirs.merged, p, n)) === undefined;
  }
  return false;
}

/**
 * The same changes as {@link overlayChanges}, without any mount: the parent's view is read from
 * its layers, the overlay lowerdirs of the parent (`lowers`, top first), the way overlayfs looks
 * a path up in them (the topmost entry wins; a whiteout hides the path; a directory merges with
 * the directories below it down to the first opaque one or the first entry that is not a
 * directory), and an opaque upper directory is told by its `opaqueXattr` attribute
 * (`trusted.overlay.opaque`, or `user.overlay.opaque` under `userxattr`) set to `y`. A diff
 * that mounted both views costs two overlay mounts and two unmounts (each unmount waits for an
 * RCU grace period: 10-20 ms right after a container's namespaces went away). The snapshotter
 * must mount without `redirect_dir` and `metacopy`, as for {@link overlayChanges}.
 */
export async function overlayLayerChanges(
  upper: string,
  lowers: readonly string[],
  opaqueXattr: string,
): Promise<Change[]> {
  const out: Change[] = [];
  await layersDir({ upper, opaqueXattr, tick: yielder() }, '', [...lowers], out);
  return out;
}

interface LayerDirs {
  upper: string;
  opaqueXattr: string;
  tick: () => Promise<void> | undefined;
}

/** A path as the lower layers show it: its topmost entry, and the directories merged under it. */
interface LowerEntry {
  stat: BigIntStats;
  /** When `stat` is a directory: the layers' directories it merges, top first; else empty. */
  dirs: string[];
}

/**
 * `name` in the directory that `dirs` (one per layer where it is a visible directory, top first)
 * merge, as overlayfs resolves it; undefined when the merged view has no such entry.
 */
function lookupLower(
  dirs: readonly string[],
  name: string,
  opaqueXattr: string,
): LowerEntry | undefined {
  let found: BigIntStats | undefined;
  const merged: string[] = [];
  for (const d of dirs) {
    const p = join(d, name);
    const st = lstatMaybeSync(p);
    if (st === undefined) continue;
    if (found === undefined) {
      if (isWhiteout(st)) return undefined;
      found = st;
      if (!st.isDirectory()) return { stat: st, dirs: [] };
    } else if (!st.isDirectory()) {
      break; // a whiteout or a non-directory ends the merge
    }
    merged.push(p);
    if (hasOpaqueXattr(p, opaqueXattr)) break;
  }
  return found === undefined ? undefined : { stat: found, dirs: merged };
}

/** Whether directory `path` carries overlayfs's opaque marker (`<opaqueXattr>` = `y`). */
function hasOpaqueXattr(path: string, opaqueXattr: string): boolean {
  let attrs: [string, Buffer][];
  try {
    attrs = lxattrs(path);
  } catch (err) {
    // A filesystem without extended attributes has no opaque directory.
    if ((err as NodeJS.ErrnoException).code === 'ENOTSUP') return false;
    throw err;
  }
  return attrs.some(([n, v]) => n === opaqueXattr && v.length === 1 && v[0] === 0x79);
}

async function layersDir(
  t: LayerDirs,
  dir: string,
  lowers: readonly string[],
  out: Change[],
): Promise<void> {
  for (const name of sortedNames(join(t.upper, dir))) {
    await t.tick();
    const p = rel(dir, name);
    const us = lstatBigSync(join(t.upper, p));
    const low = lowers.length > 0 ? lookupLower(lowers, name, t.opaqueXattr) : undefined;
    if (isWhiteout(us)) {
      if (low !== undefined) out.push({ path: p, kind: 'delete' });
      continue;
    }
    out.push({ path: p, kind: low === undefined ? 'add' : 'modify', stat: us });
    if (!us.isDirectory()) continue;
    if (low?.stat.isDirectory()) {
      const opaque = hidesLower(t, p, low.dirs);
      if (opaque) out.push({ path: p, kind: 'opaque' });
      await layersDir(t, p, opaque ? [] : low.dirs, out);
    } else {
      await layersDir(t, p, [], out);
    }
  }
}

/**
 * Whether upper directory `p` hides the lower one (`dirs`), as {@link isOpaque} decides it: some
 * visible lower child without an upper entry exists, and the directory is opaque.
 */
function hidesLower(t: LayerDirs, p: string, dirs: readonly string[]): boolean {
  const upperNames = new Set(readdirSync(join(t.upper, p)));
  const seen = new Set<string>();
  for (const d of dirs) {
    for (const n of readdirSync(d)) {
      if (upperNames.has(n) || seen.has(n)) continue;
      seen.add(n);
      if (lookupLower(dirs, n, t.opaqueXattr) !== undefined)
        return hasOpaqueXattr(join(t.upper, p), t.opaqueXattr);
    }
  }
  return false;
}
