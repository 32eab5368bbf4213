/**
 * Tree copy with `cp -a` semantics (tonistiigi/fsutil's copy, as BuildKit's FileOp uses it):
 * modes, owners, symlinks (copied as links, never followed), hardlinks (within one copy), times and
 * devices are preserved, with optional owner/mode/time overrides and include/exclude patterns.
 * Reads stay inside the source root and writes inside the destination root: every entry is
 * lstat'ed, directories are only entered when they are real directories, files are created with
 * O_EXCL (which never follows a symlink), and an existing destination entry that is in the way
 * is never written through. Extended attributes are copied as fsutil does (its errors ignored, as
 * BuildKit's FileOp does), except `trusted.overlay.*` and `security.selinux`: one `getfattr` over
 * the source and, only when it found any, one `setfattr` at the end (after chown, which would
 * clear `security.capability`).
 */
import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import type { Stats } from 'node:fs';
import {
  chmod,
  copyFile,
  lchown,
  link,
  lstat,
  lutimes,
  mkdir,
  readdir,
  readlink,
  realpath,
  rm,
  symlink,
} from 'node:fs/promises';
import { posix } from 'node:path';
import { promisify } from 'node:util';
import { FsError, FsErrorCode, lstatOrUndefined } from '@kiln/layers';
import { goMatch, splitWildcards } from './match.js';
import { applyMeta, mkdirAllResolved } from './ops.js';
import type { Owner } from './ops.js';
import { EMPTY_MATCH_INFO, PatternMatcher } from './patterns.js';
import type { MatchInfo } from './patterns.js';
import { cleanRootPath, displayPath, resolveInRoot } from '@kiln/layers';
import { readTreeXattrs, writeXattrs, xattrTarget } from '@kiln/layers';
import type { XattrTarget, Xattrs } from '@kiln/layers';

const execFileAsync = promisify(execFile);

export interface CopyOptions {
  /** Owner of everything copied (and of directories created on the way); default: the source's. */
  owner?: Owner | undefined;
  /** Mode bits (`& 0o7777`) for everything copied except symlinks; default: the source's. */
  mode?: number | undefined;
  /** atime/mtime of everything copied and created; default: the source's (now for created parents). */
  time?: Date | undefined;
  /** Follow a symlink named by the source path itself (never those inside a copied tree). */
  followSymlinks?: boolean;
  /** Copy a source directory's contents into the destination rather than the directory itself. */
  copyDirContents?: boolean;
  /** Only copy entries matching these patterns (relative to the copied source). */
  includePatterns?: readonly string[];
  /** Skip entries matching these patterns (relative to the copied source); `!` re-includes. */
  excludePatterns?: readonly string[];
  /** Replace a destination entry of another type (a directory by a file and vice versa). */
  alwaysReplaceExistingDestPaths?: boolean;
  /** Mode of destination parent directories created on the way (default 0o755). */
  parentMode?: number;
}

/**
 * Resolves a source path with wildcards in its components (fsutil's ResolveWildcards): the part
 * before the first wildcard component is resolved inside `root`, then entries below it whose
 * relative path matches the rest are returned (root-relative, sorted), directories not entered
 * once matched. Without wildcards, returns `[src]` unchanged.
 */
export async function resolveWildcards(
  root: string,
  src: string,
  followSymlinks: boolean,
): Promise<string[]> {
  const { dir, pattern } = splitWildcards(cleanRootPath(src));
  if (pattern === '') return [cleanRootPath(src)];
  const base = await resolveInRoot(root, dir, { followFinal: followSymlinks });
  const depth = pattern.split('/').length;
  const out: string[] = [];
  const walk = async (host: string, rel: string, level: number): Promise<void> => {
    const st = await lstatOrUndefined(host);
    if (st === undefined || !st.isDirectory()) return;
    for (const name of (await readdir(host)).sort()) {
      const r = rel === '' ? name : `${rel}/${name}`;
      const child = `${host}/${name}`;
      if (level === depth) {
        if (goMatch(pattern, r)) out.push(displayPath(root, child));
        continue;
      }
      if (goMatch(pattern, r)) {
        out.push(displayPath(root, child));
        continue;
      }
      await walk(child, r, level + 1);
    }
  };
  await walk(base, '', 1);
  return out;
}

interface DirFrame {
  src: string;
  dst: string;
  stat: Stats;
  /** Whether the destination directory exists (created by this copy or found). */
  exists: boolean;
  /** Whether this copy created it (its metadata is then set once its children are in). */
  created: boolean;
}

/**
 * Copies root-relative `src` of `srcRoot` to root-relative `dst` of `dstRoot` (fsutil's Copy for
 * one source). A destination ending in `/` names a directory; a file or (without
 * `copyDirContents`) a directory copied onto an existing directory goes inside it.
 * A missing source is {@link FsErrorCode.NotFound}.
 */
export async function copyPath(
  srcRoot: string,
  src: string,
  dstRoot: string,
  dst: string,
  opts: CopyOptions = {},
): Promise<void> {
  // Patterns are compiled first: a malformed one fails before anything is written.
  const copier = new TreeCopier(srcRoot, dstRoot, opts);
  const parentMeta = { mode: opts.parentMode ?? 0o755, owner: opts.owner, time: opts.time };
  // A destination ending in `/` (or `/.`) is a directory: create it; otherwise create its parent.
  const dstIsDir = dst.endsWith('/') || dst.endsWith('/.') || cleanRootPath(dst) === '/';
  const ensure = dstIsDir ? dst : posix.dirname(cleanRootPath(dst));
  await mkdirAllResolved(dstRoot, await resolveInRoot(dstRoot, ensure), parentMeta);
  let dstHost = await resolveInRoot(dstRoot, dst);

  const srcClean = cleanRootPath(src);
  const srcHost = await resolveInRoot(srcRoot, srcClean, {
    followFinal: opts.followSymlinks ?? false,
  });
  const srcStat = await lstatOrUndefined(srcHost);
  if (srcStat === undefined)
    throw new FsError(FsErrorCode.NotFound, 'no such file or directory', { path: srcClean });

  // prepareTargetDir: a destination directory that exists receives the source by name.
  const dstStat = await statInRoot(dstRoot, dstHost);
  if (
    (!opts.copyDirContents && srcStat.isDirectory() && dstStat !== undefined) ||
    (!srcStat.isDirectory() && dstStat?.isDirectory() === true)
  ) {
    const base = posix.basename(srcClean);
    if (dstStat?.isDirectory() && base !== '')
      dstHost = `${dstHost === '/' ? '' : dstHost}/${base}`;
  }
  const target =
    (opts.copyDirContents && srcStat.isDirectory() && dstStat === undefined) || dstHost === dstRoot
      ? dstHost
      : posix.dirname(dstHost);
  await mkdirAllResolved(dstRoot, target, parentMeta);

  copier.xattrs = await readTreeXattrs(srcHost);
  await copier.copyEntry(srcHost, '', dstHost, false, EMPTY_MATCH_INFO, EMPTY_MATCH_INFO, []);
  await copier.finishXattrs();
}

/** `stat` of a host path inside root, following a final symlink only while it stays inside root. */
async function statInRoot(root: string, host: string): Promise<Stats | undefined> {
  const st = await lstatOrUndefined(host);
  if (st === undefined || !st.isSymbolicLink()) return st;
  return lstatOrUndefined(await resolveInRoot(root, displayPath(root, host)));
}

class TreeCopier {
  private readonly inodes = new Map<string, string>();
  private readonly include: PatternMatcher | undefined;
  private readonly exclude: PatternMatcher | undefined;
  private readonly chownAll: boolean;
  /** Extended attributes of the copied source, by path below it (`rel`). */
  xattrs: ReadonlyMap<string, Xattrs> = new Map();
  private readonly pendingXattrs: XattrTarget[] = [];

  constructor(
    private readonly srcRoot: string,
    private readonly dstRoot: string,
    private readonly opts: CopyOptions,
  ) {
    this.include = opts.includePatterns?.length
      ? new PatternMatcher(opts.includePatterns)
      : undefined;
    this.exclude = opts.excludePatterns?.length
      ? new PatternMatcher(opts.excludePatterns)
      : undefined;
    this.chownAll = opts.owner !== undefined || process.getuid?.() === 0;
  }

  /**
   * Copies host `src` (already inside the source root) to host `target`. `rel` is the path below
   * the copied source ('' for the source itself), matched against include/exclude patterns.
   * `parents` are the directories on the way that were deferred because only part of them is
   * included: they are created when something inside them is copied.
   */
  async copyEntry(
    src: string,
    rel: string,
    target: string,
    overwriteMeta: boolean,
    incParent: MatchInfo,
    excParent: MatchInfo,
    parents: DirFrame[],
  ): Promise<void> {
    const st = await lstatOrUndefined(src);
    if (st === undefined) {
      throw new FsError(FsErrorCode.NotFound, 'no such file or directory', {
        path: displayPath(this.srcRoot, src),
      });
    }
    let full = true;
    let incInfo = EMPTY_MATCH_INFO;
    let excInfo = EMPTY_MATCH_INFO;
    if (rel !== '') {
      if (this.include !== undefined) {
        const r = this.include.matchesUsingParentResults(rel, incParent);
        incInfo = r.info;
        if (!r.matched) {
          if (!st.isDirectory() || !this.mayIncludeBelow(rel)) return;
          full = false;
        }
      }
      if (this.exclude !== undefined) {
        const r = this.exclude.matchesUsingParentResults(rel, excParent);
        excInfo = r.info;
        if (r.matched && !this.exceptionBelow(rel, st)) return;
      }
    }

    if (st.isDirectory()) {
      const frame: DirFrame = { src, dst: target, stat: st, exists: false, created: false };
      if (full) await this.ensureDirs([...parents, frame], overwriteMeta);
      const chain = full ? [] : [...parents, frame];
      const names = (await readdir(src)).sort();
      for (const name of names) {
        await this.copyEntry(
          `${src}/${name}`,
          rel === '' ? name : `${rel}/${name}`,
          `${target}/${name}`,
          true,
          incInfo,
          excInfo,
          chain,
        );
      }
      if (frame.created || (frame.exists && overwriteMeta && full))
        await this.copyInfo(st, target, rel);
      return;
    }

    await this.ensureDirs(parents, true);
    await this.clearFileTarget(target);
    if (st.isFile()) {
      const key = `${st.dev}:${st.ino}`;
      const first = st.nlink > 1 ? this.inodes.get(key) : undefined;
      if (first !== undefined) {
        await link(first, target);
        return; // shares the first copy's inode and metadata
      }
      await copyFile(src, target, constants.COPYFILE_EXCL);
      if (st.nlink > 1) this.inodes.set(key, target);
    } else if (st.isSymbolicLink()) {
      await symlink(await readlink(src), target);
    } else if (st.isCharacterDevice() || st.isBlockDevice()) {
      const major = Math.floor(st.rdev / 256) & 0xfff;
      const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
      await execFileAsync('mknod', [
        target,
        st.isCharacterDevice() ? 'c' : 'b',
        String(major),
        String(minor),
      ]);
    } else if (st.isFIFO()) {
      await execFileAsync('mkfifo', [target]);
    } else {
      throw new FsError(FsErrorCode.Conflict, 'cannot copy a socket', {
        path: displayPath(this.srcRoot, src),
      });
    }
    await this.copyInfo(st, target, rel);
  }

  /** Sets the copied entries' extended attributes, in one process; errors are ignored (fsutil). */
  async finishXattrs(): Promise<void> {
    if (this.pendingXattrs.length > 0) await writeXattrs(this.pendingXattrs);
  }

  /** Whether some include pattern could match something below directory `rel`. */
  private mayIncludeBelow(rel: string): boolean {
    const comps = rel.split('/');
    return this.include!.patterns.some((p) => {
      if (p.exclusion) return false;
      for (let i = 0; i < comps.length; i++) {
        const pc = p.dirs[i];
        if (pc === undefined) return false;
        if (pc.includes('**')) return true;
        if (!goMatch(pc, comps[i]!)) return false;
      }
      return p.dirs.length > comps.length;
    });
  }

  /** An excluded directory is still entered when an exception (`!`) names something below it. */
  private exceptionBelow(rel: string, st: Stats): boolean {
    if (!st.isDirectory() || !this.exclude!.exclusions) return false;
    const dirSlash = `${rel}/`;
    return this.exclude!.patterns.some(
      (p) => p.exclusion && `${p.cleanedPattern}/`.startsWith(dirSlash),
    );
  }

  /** Creates the deferred directories of `chain` that do not exist yet, outermost first. */
  private async ensureDirs(chain: DirFrame[], overwriteMeta: boolean): Promise<void> {
    for (const d of chain) {
      if (d.exists) continue;
      const st = await lstatOrUndefined(d.dst);
      if (st?.isDirectory()) {
        if (overwriteMeta) await chmod(d.dst, this.modeOf(d.stat));
        d.exists = true;
        continue;
      }
      if (st !== undefined) {
        if (!this.opts.alwaysReplaceExistingDestPaths) {
          throw new FsError(FsErrorCode.Conflict, 'cannot copy a directory onto a non-directory', {
            path: displayPath(this.dstRoot, d.dst),
          });
        }
        await rm(d.dst, { force: true });
      }
      await mkdir(d.dst, { mode: 0o700 });
      d.exists = true;
      d.created = true;
    }
  }

  /** Makes room for a non-directory: an existing non-directory is removed (never written through). */
  private async clearFileTarget(target: string): Promise<void> {
    const st = await lstatOrUndefined(target);
    if (st === undefined) return;
    if (st.isDirectory() && !this.opts.alwaysReplaceExistingDestPaths) {
      throw new FsError(FsErrorCode.Conflict, 'cannot replace a directory with a file', {
        path: displayPath(this.dstRoot, target),
      });
    }
    await rm(target, { recursive: true, force: true });
  }

  private modeOf(st: Stats): number {
    return this.opts.mode !== undefined ? this.opts.mode & 0o7777 : st.mode & 0o7777;
  }

  private async copyInfo(st: Stats, target: string, rel: string): Promise<void> {
    const xattrs = this.xattrs.get(rel);
    if (xattrs !== undefined) this.pendingXattrs.push(await xattrTarget(target, xattrs));
    if (this.chownAll) {
      const o = this.opts.owner ?? { uid: st.uid, gid: st.gid };
      await lchown(target, o.uid, o.gid);
    }
    const isLink = st.isSymbolicLink();
    await applyMeta(target, { mode: this.modeOf(st) }, isLink);
    const t = this.opts.time;
    await lutimes(target, t ?? st.atime, t ?? st.mtime);
  }
}

/**
 * Makes directory `to` a full copy of directory `from`: its contents (as {@link copyPath} with
 * `copyDirContents`) and the root directory's own owner (when running as root), mode and times.
 * Used to make a mutable copy of a snapshot when no copy-on-write is available.
 */
export async function cloneTree(from: string, to: string): Promise<void> {
  const src = await realpath(from);
  const dst = await realpath(to);
  await copyPath(src, '/', dst, '/', { copyDirContents: true });
  const st = await lstat(src);
  if (process.getuid?.() === 0) await lchown(dst, st.uid, st.gid);
  await chmod(dst, st.mode & 0o7777);
  await lutimes(dst, st.atime, st.mtime);
}
