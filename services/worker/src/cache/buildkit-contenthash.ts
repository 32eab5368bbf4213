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
 * - several selectors are joined: sha256 of their digests joined by `\0`.
 * Wildcards and include/exclude patterns follow other code paths in BuildKit and are not
 * reproduced: {@link buildkitChecksumSupported}.
 */
import { createHash } from 'node:crypto';
import { createReadStream, readdirSync, readlinkSync } from 'node:fs';
import type { Stats } from 'node:fs';
import { posix } from 'node:path';
import { yielder } from '@kiln/layers';
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
  selectors: readonly string[];
  wildcard: boolean;
  includePatterns: readonly string[];
  excludePatterns: readonly string[];
}): boolean {
  const hasWildcard = (s: string): boolean => /[*?[]/.test(s.replace(/\\./g, ''));
  return (
    dep.includePatterns.length === 0 &&
    dep.excludePatterns.length === 0 &&
    !(dep.wildcard && dep.selectors.some(hasWildcard))
  );
}

/**
 * BuildKit's content digest of `selectors` inside the tree at `dir` (its `NewContentHashFunc`:
 * selectors deduplicated and sorted, each resolved inside the root, following a final symlink
 * when `followLinks`).
 */
export async function buildkitChecksum(
  dir: string,
  selectors: readonly string[],
  followLinks: boolean,
): Promise<string> {
  const paths = [...new Set(selectors.map((s) => posix.join('/', s)))].sort();
  // A path under another selected one adds nothing (BuildKit's dedupePaths).
  const kept = paths.filter(
    (p) => !paths.some((q) => q !== p && (q === '/' || p.startsWith(`${q}/`))),
  );
  const tick = yielder();
  const digests: string[] = [];
  for (const p of kept) digests.push(await entry(dir, resolveInside(dir, p, followLinks), tick));
  return digestOf(digests.join('\0'));
}
