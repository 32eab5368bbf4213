/**
 * BuildKit v0.11's content checksum of paths in a tree (`cache/contenthash`), for BuildKit's cache
 * formats only: the content link of a step that reads an input through selectors must carry
 * BuildKit's digest for BuildKit's exported caches to meet Kiln's and back. Kiln's own keys use
 * `contenthash.ts`.
 *
 * The rules (checked against buildkitd v0.11.6's exports):
 * - an entry's header is tarsum v1's selected tar header fields, with an empty name: `name`,
 *   `mode` (permission, setuid, setgid, sticky bits), `uid`, `gid`, `size` (regular files),
 *   `typeflag`, `linkname`, `uname`, `gname` (empty), `devmajor`, `devminor`, each as key then
 *   value; a file's digest is sha256(header, content), a symlink's (mode 0777) and a directory
 *   header's sha256(header);
 * - a directory's digest is sha256 over `\0` + its header digest, then each child in byte order
 *   as `\0<name>` + the child's digest; the root's header digest is that of no bytes;
 * - several selectors are joined: sha256 of their digests joined by `\0`;
 * - a selector with a wildcard (of a copy that allows them) is BuildKit's `includedPaths`: every
 *   entry whose path matches the pattern (Go's `path.Match`), and every entry under a matched
 *   directory, in the order of BuildKit's key tree (a directory, then its subtree, siblings in
 *   byte order); a directory counts by its header digest only, a symlink by its target's digest
 *   when following links; the selector's digest is that of the single match when its base name is
 *   the pattern's, else sha256 of each match's base name and digest, joined by `\0` (of no bytes
 *   when nothing matches).
 * Include/exclude patterns are not reproduced: {@link buildkitChecksumSupported}.
 */
import { createHash } from 'node:crypto';
import { createReadStream, readdirSync, readlinkSync } from 'node:fs';
import type { Stats } from 'node:fs';
import { posix } from 'node:path';
import { yielder } from '@kiln/layers';
import { goMatch, hasWildcards, splitWildcards } from '../fs/match.js';
import { lstatInside, resolveInside } from './contenthash.js';

const EMPTY = `sha256:${createHash('sha256').digest('hex')}`;

/** Go's archive/tar mode bits as tar.FileInfoHeader sets them. */
function header(st: Stats, typeflag: string, size: number, linkname = '', mode?: number): Buffer {
  const fields = [
    ['name', ''],
    ['mode', String(mode ?? st.mode & 0o7777)],
    ['uid', String(st.uid)],
    ['gid', String(st.gid)],
    ['size', String(size)],
    ['typeflag', typeflag],
    ['linkname', linkname],
    ['uname', ''],
    ['gname', ''],
    ['devmajor', '0'],
    ['devminor', '0'],
  ];
  return Buffer.from(fields.map(([k, v]) => `${k}${v}`).join(''));
}

const digestOf = (...parts: (string | Buffer)[]): string => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return `sha256:${h.digest('hex')}`;
};

async function entry(
  root: string,
  abs: string,
  tick: () => Promise<void> | undefined,
): Promise<string> {
  await tick();
  const st = lstatInside(root, abs);
  if (st.isDirectory()) {
    const h = createHash('sha256');
    h.update('\0');
    h.update(abs === '/' ? EMPTY : digestOf(header(st, '5', 0)));
    const names = readdirSync(root + abs).sort((a, b) =>
      Buffer.compare(Buffer.from(a), Buffer.from(b)),
    );
    for (const name of names) {
      h.update(`\0${name}`);
      h.update(await entry(root, posix.join(abs, name), tick));
    }
    return `sha256:${h.digest('hex')}`;
  }
  if (st.isSymbolicLink()) return digestOf(header(st, '2', 0, readlinkSync(root + abs), 0o777));
  if (st.isFile()) {
    const h = createHash('sha256');
    h.update(header(st, '0', st.size));
    for await (const chunk of createReadStream(root + abs)) h.update(chunk as Buffer);
    return `sha256:${h.digest('hex')}`;
  }
  const type = st.isFIFO() ? '6' : st.isCharacterDevice() ? '3' : st.isBlockDevice() ? '4' : '0';
  return digestOf(header(st, type, 0));
}

/** Whether BuildKit's checksum of these selectors is reproduced here. */
export function buildkitChecksumSupported(dep: {
  includePatterns: readonly string[];
  excludePatterns: readonly string[];
}): boolean {
  return dep.includePatterns.length === 0 && dep.excludePatterns.length === 0;
}

const byteOrder = (a: string, b: string): number => Buffer.compare(Buffer.from(a), Buffer.from(b));

/**
 * The entries of the tree under `dir` (a real directory inside `root`) as BuildKit's key tree
 * orders them: each entry, then (a directory) its subtree; siblings in byte order.
 */
function* keyOrder(root: string, dir: string): Generator<{ abs: string; st: Stats }> {
  for (const name of readdirSync(root + dir).sort(byteOrder)) {
    const abs = posix.join(dir, name);
    const st = lstatInside(root, abs);
    yield { abs, st };
    if (st.isDirectory()) yield* keyOrder(root, abs);
  }
}

/** BuildKit's checksum of one wildcard selector (`includedPaths`, then the join). */
async function wildcardChecksum(
  root: string,
  pattern: string,
  followLinks: boolean,
  tick: () => Promise<void> | undefined,
): Promise<string> {
  const { dir } = splitWildcards(pattern);
  // The fixed part is resolved (links followed); matches are named from it as written.
  const resolved = dir === '/' ? '/' : resolveInside(root, dir, true);
  let st: Stats | undefined;
  try {
    st = lstatInside(root, resolved);
  } catch {
    st = undefined;
  }
  const matched: { path: string; digest: string }[] = [];
  if (st?.isDirectory()) {
    let under: string | undefined;
    for (const e of keyOrder(root, resolved)) {
      await tick();
      const path = dir === '/' ? e.abs : dir + e.abs.slice(resolved === '/' ? 0 : resolved.length);
      if (under === undefined || !path.startsWith(`${under}/`)) {
        if (!goMatch(pattern, path)) continue;
        under = path;
      }
      let digest: string;
      if (e.st.isDirectory()) digest = digestOf(header(e.st, '5', 0));
      else if (e.st.isSymbolicLink() && followLinks)
        digest = await entry(root, resolveInside(root, e.abs, true), tick);
      else digest = await entry(root, e.abs, tick);
      matched.push({ path, digest });
    }
  }
  if (matched.length === 0) return EMPTY;
  const only = matched[0]!;
  if (matched.length === 1 && posix.basename(pattern) === posix.basename(only.path))
    return only.digest;
  const h = createHash('sha256');
  for (const [i, m] of matched.entries()) {
    if (i > 0) h.update('\0');
    h.update(posix.basename(m.path));
    h.update(m.digest);
  }
  return `sha256:${h.digest('hex')}`;
}

/**
 * BuildKit's content digest of `selectors` inside the tree at `dir` (its `NewContentHashFunc`:
 * selectors deduplicated and sorted, each resolved inside the root, following a final symlink
 * when `followLinks`; with `wildcard`, a selector holding a wildcard matches as a pattern).
 */
export async function buildkitChecksum(
  dir: string,
  selectors: readonly string[],
  followLinks: boolean,
  wildcard = false,
): Promise<string> {
  const paths = [...new Set(selectors.map((s) => posix.join('/', s)))].sort();
  const isPattern = (p: string): boolean => wildcard && p.split('/').some(hasWildcards);
  // A path under another selected one adds nothing (BuildKit's dedupePaths; not patterns).
  const kept = paths.filter(
    (p) =>
      isPattern(p) ||
      !paths.some((q) => q !== p && !isPattern(q) && (q === '/' || p.startsWith(`${q}/`))),
  );
  const tick = yielder();
  const digests: string[] = [];
  for (const p of kept)
    digests.push(
      isPattern(p)
        ? await wildcardChecksum(dir, p, followLinks, tick)
        : await entry(dir, resolveInside(dir, p, followLinks), tick),
    );
  return digestOf(digests.join('\0'));
}
