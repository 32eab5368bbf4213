/**
 * The content checksum of a synced context computed from its manifest, without reading the tree
 * (issue 9: a 5,000-file context cost 5,000 lstats and as many small hashes on the critical path
 * of every COPY after a change). A context's snapshot is written from its manifest (paths, types,
 * modes, owners, link targets and file digests: `sources/local/manifest-tree.ts`), so the
 * manifest says everything {@link depChecksum} reads from the tree; the answer is the same
 * digest, byte for byte (`manifest-checksum.test.ts` compares the two on written trees).
 *
 * Only what resolves without following a symlink is answered here (no wildcard selector, no
 * symlink on a selector's way, none at its end when links are followed) and only a selector that
 * names an entry; anything else is undefined, and the caller walks the tree as before.
 */
import type { ManifestEntry } from '@kiln/bus';
import { posix } from 'node:path';
import { depFilter } from './dep-checksum.js';
import type { DepChecksumSpec } from './dep-checksum.js';
import { entryHash, headerOf } from './contenthash.js';

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

/** The owner and mode of the tree's root directory (the snapshot's own, not in the manifest). */
export interface RootMeta {
  mode: number;
  uid: number;
  gid: number;
}

interface Node {
  e: ManifestEntry | undefined;
  children: Map<string, Node> | undefined;
}

function tree(entries: readonly ManifestEntry[]): Node | undefined {
  const root: Node = { e: undefined, children: new Map() };
  const dirs = new Map<string, Node>([['', root]]);
  for (const e of entries) {
    const slash = e.path.lastIndexOf('/');
    const parent = dirs.get(slash < 0 ? '' : e.path.slice(0, slash));
    // A manifest lists a directory before what is in it (validateManifest): else not ours to say.
    if (parent?.children === undefined) return undefined;
    const isDir = (e.mode & S_IFMT) === S_IFDIR;
    const node: Node = { e, children: isDir ? new Map() : undefined };
    parent.children.set(e.path.slice(slash + 1), node);
    if (isDir) dirs.set(e.path, node);
  }
  return root;
}

/** The digest contenthash's `entryDigest` gives the entry, or undefined (filtered out). */
function digestOf(
  node: Node,
  root: RootMeta,
  rel: string,
  filter: ((rel: string, isDir: boolean) => boolean) | undefined,
): string | undefined {
  const e = node.e;
  const type = e === undefined ? S_IFDIR : e.mode & S_IFMT;
  const meta = e ?? root;
  if (type === S_IFDIR) {
    const parts: string[] = [];
    for (const name of [...node.children!.keys()].sort()) {
      const d = digestOf(node.children!.get(name)!, root, rel ? `${rel}/${name}` : name, filter);
      if (d !== undefined) parts.push(name, d);
    }
    if (rel && filter && !filter(rel, true) && parts.length === 0) return undefined;
    return entryHash(headerOf('dir', meta.mode, meta.uid, meta.gid), ...parts);
  }
  if (rel && filter && !filter(rel, false)) return undefined;
  // A symlink's own mode bits are 0777 on Linux, whatever the client's listing said.
  if (type === S_IFLNK)
    return entryHash(headerOf('link', 0o777, e!.uid, e!.gid), e!.linkname ?? '');
  return entryHash(
    headerOf('file', e!.mode, e!.uid, e!.gid),
    (e!.digest ?? '').slice('sha256:'.length),
  );
}

/** The node `sel` names, following no symlink; undefined when that is not possible here. */
function resolve(root: Node, sel: string, followLinks: boolean): Node | undefined {
  let node = root;
  const parts = posix.normalize(`/${sel}`).split('/').filter(Boolean);
  for (let i = 0; i < parts.length; i++) {
    const next = node.children?.get(parts[i]!);
    if (next === undefined) return undefined;
    const isLink = ((next.e?.mode ?? 0) & S_IFMT) === S_IFLNK;
    if (isLink && (i < parts.length - 1 || followLinks)) return undefined;
    node = next;
  }
  return node;
}

/**
 * {@link depChecksum} of a tree written from `entries` whose root directory has `root`'s owner
 * and mode; undefined when it must be computed from the tree (see the module comment).
 */
export function manifestChecksum(
  entries: readonly ManifestEntry[],
  root: RootMeta,
  dep: DepChecksumSpec,
): string | undefined {
  if (dep.wildcard && dep.selectors.some((s) => /[*?[]/.test(s))) return undefined;
  for (const e of entries) {
    const t = e.mode & S_IFMT;
    if (t !== S_IFDIR && t !== S_IFREG && t !== S_IFLNK) return undefined;
    if (t === S_IFREG && !e.digest?.startsWith('sha256:')) return undefined;
  }
  const top = tree(entries);
  if (top === undefined) return undefined;
  const filter = depFilter(dep);
  const parts: string[] = [];
  for (const sel of dep.selectors) {
    const node = resolve(top, sel === '' ? '/' : sel, dep.followLinks);
    if (node === undefined) return undefined;
    const d = digestOf(node, root, '', filter);
    parts.push(`sha256:${d ?? entryHash('empty')}`);
  }
  return parts.join(',');
}
