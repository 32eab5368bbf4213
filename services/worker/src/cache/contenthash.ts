/**
 * Content checksums of paths inside a directory tree: what a cache key uses for inputs read through
 * selectors (BuildKit's cache/contenthash), so that `COPY package.json .` is keyed by that file
 * alone, not by the whole context.
 *
 * What counts: each entry's type, permission bits (and setuid/setgid/sticky), uid, gid, symlink
 * target and, for regular files, the sha256 of the content; directories hash their sorted children.
 * Modification times never count. Paths are resolved inside the root (symlinks in the selector
 * never lead outside it).
 */
import { createHash } from 'node:crypto';
import { createReadStream, lstatSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import type { Stats } from 'node:fs';
import { SMALL_FILE, yielder } from '@kiln/layers';
import { posix } from 'node:path';
import { KilnError } from '@kiln/protocol';

export interface ChecksumOptions {
  /** Treat the selector's last components as filepath.Match wildcards. */
  wildcard?: boolean;
  /** Follow a symlink at the selector itself (not below it). */
  followLinks?: boolean;
  /** Keep only entries (relative to the selected path) for which this returns true. */
  filter?: (relPath: string, isDir: boolean) => boolean;
  /**
   * The sha256 (hex) of a regular file's content when already known, by its path inside the root
   * (leading `/`) and size; undefined: the file is read. Only for trees that cannot have changed
   * since (a committed snapshot).
   */
  knownDigest?: (path: string, size: number) => string | undefined;
}

export class ChecksumError extends KilnError {
  constructor(message: string, path: string, cause?: unknown) {
    super('CHECKSUM_FAILED', message, { cause, details: { path } });
  }
}

/** sha256 (hex) of the parts, each followed by a NUL. */
export const entryHash = (...parts: (string | Buffer)[]): string => {
  const hash = createHash('sha256');
  for (const p of parts) {
    hash.update(p);
    hash.update('\0');
  }
  return hash.digest('hex');
};

/** What an entry's hash starts with: its kind, permission bits and owner. */
export function headerOf(kind: string, mode: number, uid: number, gid: number): string {
  return `${kind} ${(mode & 0o7777).toString(8)} ${uid} ${gid}`;
}

const header = (kind: string, st: Stats): string => headerOf(kind, st.mode, st.uid, st.gid);

async function fileDigest(path: string, size: number): Promise<string> {
  const hash = createHash('sha256');
  if (size <= SMALL_FILE) hash.update(readFileSync(path));
  else for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Resolves `rel` inside `root`, following symlinks within the root; `..` never climbs above it. */
export function resolveInside(root: string, rel: string, followFinal: boolean): string {
  const parts = posix.normalize(`/${rel}`).split('/').filter(Boolean);
  let cur = '/';
  let hops = 0;
  for (let i = 0; i < parts.length; i++) {
    const next = posix.join(cur, parts[i]!);
    let st: Stats;
    try {
      st = lstatSync(root + next);
    } catch {
      return next; // missing: the caller reports it
    }
    const last = i === parts.length - 1;
    if (st.isSymbolicLink() && (!last || followFinal)) {
      if (++hops > 255) throw new ChecksumError(`too many symlinks resolving ${rel}`, rel);
      const target = readlinkSync(root + next);
      const rest = parts.slice(i + 1);
      const base = target.startsWith('/') ? '/' : cur;
      const joined = posix.normalize(posix.join(base, target)).split('/').filter(Boolean);
      parts.splice(0, parts.length, ...joined, ...rest);
      cur = '/';
      i = -1;
      continue;
    }
    cur = next;
  }
  return cur;
}

/** The lstat of `abs` inside `root`; a missing entry is a {@link ChecksumError}. */
export function lstatInside(root: string, abs: string): Stats {
  try {
    return lstatSync(root + abs);
  } catch (cause) {
    throw new ChecksumError(`${abs}: not found`, abs, cause);
  }
}

/** Metadata calls are synchronous (a few µs each, not a thread-pool round trip); `tick` yields. */
async function entryDigest(
  root: string,
  abs: string,
  rel: string,
  opts: ChecksumOptions,
  tick: () => Promise<void> | undefined = yielder(),
): Promise<string | undefined> {
  await tick();
  const st = lstatInside(root, abs);
  if (st.isDirectory()) {
    const names = readdirSync(root + abs).sort();
    const children: string[] = [];
    for (const name of names) {
      const childRel = rel ? `${rel}/${name}` : name;
      const d = await entryDigest(root, posix.join(abs, name), childRel, opts, tick);
      if (d !== undefined) children.push(name, d);
    }
    if (rel && opts.filter && !opts.filter(rel, true) && children.length === 0) return undefined;
    return entryHash(header('dir', st), ...children);
  }
  if (rel && opts.filter && !opts.filter(rel, false)) return undefined;
  if (st.isSymbolicLink()) return entryHash(header('link', st), readlinkSync(root + abs));
  if (st.isFile())
    return entryHash(
      header('file', st),
      opts.knownDigest?.(abs, st.size) ?? (await fileDigest(root + abs, st.size)),
    );
  return entryHash(
    header(st.isFIFO() ? 'fifo' : st.isSocket() ? 'sock' : 'dev', st),
    String(st.rdev),
  );
}

function globToRegExp(glob: string): RegExp {
  let re = '^';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '[') {
      const end = glob.indexOf(']', i + 1);
      if (end < 0) throw new ChecksumError(`bad pattern ${glob}`, glob);
      let cls = glob.slice(i + 1, end);
      if (cls.startsWith('^')) cls = `!${cls.slice(1)}`;
      re += `[${cls.startsWith('!') ? `^${cls.slice(1)}` : cls}]`;
      i = end;
    } else if (c === '\\' && i + 1 < glob.length) re += `\\${glob[++i]!}`;
    else re += c.replace(/[.+^${}()|\\]/g, '\\$&');
  }
  return new RegExp(`${re}$`);
}

function expandWildcard(root: string, pattern: string): string[] {
  const parts = posix.normalize(`/${pattern}`).split('/').filter(Boolean);
  let paths = ['/'];
  for (const part of parts) {
    const next: string[] = [];
    const isGlob = /[*?[]/.test(part);
    for (const p of paths) {
      const dir = resolveInside(root, p, true);
      if (!isGlob) {
        next.push(posix.join(p, part));
        continue;
      }
      let names: string[];
      try {
        names = readdirSync(root + dir);
      } catch {
        continue;
      }
      const re = globToRegExp(part);
      for (const n of names.sort()) if (re.test(n)) next.push(posix.join(p, n));
    }
    paths = next;
  }
  return paths;
}

/** The checksum of `selector` (a path, or a wildcard pattern) inside `root`. */
export async function checksum(
  root: string,
  selector: string,
  opts: ChecksumOptions = {},
): Promise<string> {
  const sel = selector === '' ? '/' : selector;
  if (opts.wildcard && /[*?[]/.test(sel)) {
    const matches = expandWildcard(root, sel);
    const parts: string[] = [];
    for (const m of matches) {
      const abs = resolveInside(root, m, opts.followLinks ?? false);
      const d = await entryDigest(root, abs, '', opts);
      if (d !== undefined) parts.push(m, d);
    }
    return `sha256:${entryHash('wildcard', ...parts)}`;
  }
  const abs = resolveInside(root, sel, opts.followLinks ?? false);
  const d = await entryDigest(root, abs, '', opts);
  return `sha256:${d ?? entryHash('empty')}`;
}
