/**
 * Extended attributes through Debian's `attr` tools (Node has no xattr API): `getfattr` reads a
 * whole tree in one process, `setfattr --restore` writes a batch in one process. Neither ever
 * runs once per file. Symlinks are never followed (`-h`: lgetxattr/lsetxattr).
 *
 * Values are exact bytes (hex on the wire); names and paths are decoded as UTF-8, as the rest of
 * the worker does with file names.
 */
import { spawn } from 'node:child_process';
import type { BigIntStats } from 'node:fs';
import { lstat, realpath } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';

/** An entry's extended attributes: name -> raw value. */
export type Xattrs = ReadonlyMap<string, Buffer>;

/** The Linux limits (`XATTR_NAME_MAX`, `XATTR_SIZE_MAX`). */
export const XATTR_NAME_MAX = 255;
export const XATTR_SIZE_MAX = 65536;

/**
 * Attributes that never travel: overlayfs's own markers (`trusted.overlay.*`: opaque dirs,
 * redirects, origins; meaningless or harmful outside their upper dir) and SELinux labels, which
 * belong to the host's policy (BuildKit does not carry them either).
 */
export function isSkippedXattr(name: string): boolean {
  return name.startsWith('trusted.overlay.') || name === 'security.selinux';
}

interface Run {
  code: number;
  stdout: Buffer;
  stderr: string;
}

function run(cmd: string, args: string[], input?: Buffer): Promise<Run> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, {
      env: { ...process.env, LC_ALL: 'C' },
      stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (c: Buffer) => out.push(c));
    child.stderr!.on('data', (c: Buffer) => err.push(c));
    child.on('error', (e: NodeJS.ErrnoException) => {
      const hint =
        e.code === 'ENOENT' ? ' (install the Debian package attr: scripts/setup.sh does)' : '';
      reject(Object.assign(new Error(`${cmd}: ${e.message}${hint}`), { code: e.code }));
    });
    child.on('close', (code) =>
      resolvePromise({
        code: code ?? -1,
        stdout: Buffer.concat(out),
        stderr: Buffer.concat(err).toString('utf8'),
      }),
    );
    if (input !== undefined) {
      child.stdin!.on('error', () => undefined); // a tool that dies early reports through `close`
      child.stdin!.end(input);
    }
  });
}

/** attr's quoting: `\ooo` for a byte (backslash, newline, `=` in names...); the rest is raw. */
function unquote(s: string): Buffer {
  const bytes: number[] = [];
  for (let i = 0; i < s.length; i++) {
    if (s[i] === '\\' && /^[0-7]{3}$/.test(s.slice(i + 1, i + 4))) {
      bytes.push(parseInt(s.slice(i + 1, i + 4), 8) & 0xff);
      i += 3;
    } else {
      bytes.push(s.charCodeAt(i) & 0xff);
    }
  }
  return Buffer.from(bytes);
}

/** Quotes every byte outside printable ASCII, and `\` and `=`, as setfattr's unquote reads them. */
function quote(s: string): string {
  let out = '';
  for (const b of Buffer.from(s)) {
    out +=
      b > 0x20 && b < 0x7f && b !== 0x5c && b !== 0x3d
        ? String.fromCharCode(b)
        : `\\${b.toString(8).padStart(3, '0')}`;
  }
  return out;
}

function sortedXattrs(m: Map<string, Buffer>): Xattrs {
  const names = [...m.keys()].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  return new Map(names.map((n) => [n, m.get(n)!]));
}

/**
 * Every extended attribute at and below `path` (a directory is read recursively, symlinks are not
 * followed), keyed by path relative to `path` (`''` for `path` itself, `/`-separated), names in
 * byte order. Entries without attributes are absent. Skipped names ({@link isSkippedXattr}) are
 * left out; an entry that cannot be read is skipped (as containerd does). One `getfattr` process.
 */
export async function readTreeXattrs(path: string): Promise<Map<string, Xattrs>> {
  let abs = resolve(path);
  if (abs.length > 1 && abs.endsWith('/')) abs = abs.slice(0, -1);
  const { code, stdout, stderr } = await run('getfattr', [
    '--absolute-names',
    '--dump',
    '--match=-',
    '--encoding=hex',
    '--no-dereference',
    '--physical',
    '--recursive',
    '--',
    abs,
  ]);
  // 1: some entries could not be read (reported on stderr, skipped); more is a usage error.
  if (code !== 0 && code !== 1) throw new Error(`getfattr failed (${code}): ${stderr.trim()}`);
  const out = new Map<string, Xattrs>();
  let current: string | undefined;
  let attrs = new Map<string, Buffer>();
  const flush = (): void => {
    if (current !== undefined && attrs.size > 0) out.set(current, sortedXattrs(attrs));
    current = undefined;
    attrs = new Map();
  };
  const prefix = abs === '/' ? '/' : `${abs}/`;
  for (const line of stdout.toString('latin1').split('\n')) {
    if (line.startsWith('# file: ')) {
      flush();
      const p = unquote(line.slice('# file: '.length)).toString('utf8');
      if (p === abs) current = '';
      else if (p.startsWith(prefix)) current = p.slice(prefix.length);
      continue;
    }
    if (line === '' || current === undefined) continue;
    const eq = line.indexOf('=');
    const name = unquote(eq < 0 ? line : line.slice(0, eq)).toString('utf8');
    const raw = eq < 0 ? '' : line.slice(eq + 1);
    if (raw !== '' && !/^0x([0-9a-fA-F]{2})*$/.test(raw)) {
      throw new Error(`getfattr: unexpected value encoding for ${JSON.stringify(name)}`);
    }
    if (!isSkippedXattr(name)) attrs.set(name, Buffer.from(raw.slice(2), 'hex'));
  }
  flush();
  return out;
}

/** Attributes to set on one entry; make it with {@link xattrTarget} right after the entry. */
export interface XattrTarget {
  /** Absolute host path, its parent a real path (no symlink on the way). */
  path: string;
  xattrs: Xattrs;
  /** The entry's inode when the target was made. */
  stat: Pick<BigIntStats, 'dev' | 'ino'>;
}

/**
 * A target for the entry at `path` as it is now: its parent resolved to a real path and its
 * inode recorded, so that {@link writeXattrs} can tell whether the path still leads to it.
 */
export async function xattrTarget(path: string, xattrs: Xattrs): Promise<XattrTarget> {
  const real = join(await realpath(dirname(path)), basename(path));
  return { path: real, xattrs, stat: await lstat(real, { bigint: true }) };
}

/** What {@link writeXattrs} could not set: one `setfattr` message per line (path and reason). */
export interface XattrWriteResult {
  /** Targets skipped because their path no longer leads to their inode. */
  skipped: string[];
  /** `setfattr`'s error lines, `path: reason` (LC_ALL=C reasons: `Operation not supported`...). */
  errors: string[];
}

/**
 * Sets `targets`' attributes with one `setfattr -h --restore` (lsetxattr: a symlink gets its own
 * attributes, never its target's). Each target is checked first: its parent must still be a real
 * path (no symlink swapped in on the way) and its path must still be its inode, so that nothing
 * but the entry that was made gets attributes; otherwise it is skipped. Names must be valid (see {@link validXattrName}); skipped names
 * are not written. Errors of single entries are returned, not thrown.
 */
export async function writeXattrs(targets: readonly XattrTarget[]): Promise<XattrWriteResult> {
  const result: XattrWriteResult = { skipped: [], errors: [] };
  let script = '';
  for (const t of targets) {
    const names = [...t.xattrs.keys()].filter((n) => !isSkippedXattr(n));
    if (names.length === 0) continue;
    if (!(await unchanged(t))) {
      result.skipped.push(t.path);
      continue;
    }
    script += `# file: ${quote(t.path)}\n`;
    for (const n of names) {
      if (!validXattrName(n)) throw new Error(`invalid xattr name ${JSON.stringify(n)}`);
      script += `${quote(n)}=0x${t.xattrs.get(n)!.toString('hex')}\n`;
    }
    script += '\n';
  }
  if (script === '') return result;
  const { code, stderr } = await run(
    'setfattr',
    ['--no-dereference', '--restore=-'],
    Buffer.from(script, 'latin1'),
  );
  const lines = stderr
    .split('\n')
    .map((l) => l.replace(/^setfattr: /, ''))
    .filter((l) => l !== '');
  if (code !== 0 && lines.length === 0) throw new Error(`setfattr failed (${code})`);
  result.errors = lines;
  return result;
}

/** A name the kernel can take: non-empty, at most 255 bytes, no NUL. */
export function validXattrName(name: string): boolean {
  const n = Buffer.byteLength(name);
  return n > 0 && n <= XATTR_NAME_MAX && !name.includes('\0');
}

async function unchanged(t: XattrTarget): Promise<boolean> {
  try {
    const parent = dirname(t.path);
    if ((await realpath(parent)) !== parent) return false;
    const st = await lstat(t.path, { bigint: true });
    return st.dev === t.stat.dev && st.ino === t.stat.ino;
  } catch {
    return false;
  }
}
