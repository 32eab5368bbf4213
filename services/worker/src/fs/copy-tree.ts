/**
 * Tree copy with `cp -a` semantics (tonistiigi/fsutil's copy, as BuildKit's FileOp uses it):
 * modes, owners, symlinks (copied as links, never followed), hardlinks (within one copy), times and
 * devices are preserved, with optional owner/mode/time overrides and include/exclude patterns.
 * Reads stay inside the source root and writes inside the destination root: every source entry is
 * lstat'ed, directories are only entered when they are real directories (a destination directory
 * is either made by this copy or lstat'ed as a real one), files, links and symlinks are created
 * exclusively (O_EXCL, which never follows a symlink; on EEXIST what is in the way is removed and
 * the entry created again), and an existing destination entry that is in the way is never written
 * through. Extended attributes are copied as fsutil does (its errors ignored, as BuildKit's FileOp
 * does), except `trusted.overlay.*` and `security.selinux`: one `getfattr` over the source and,
 * only when it found any, one `setfattr` at the end (after chown, which would clear
 * `security.capability`).
 *
 * Many small files (issue 9): a directory's plain files (regular, one link, no xattrs, no
 * patterns to match) are copied in batches by `copyFiles` of `@kiln/sys`, one thread-pool job per
 * batch doing each file's syscalls (lstat, open, copy_file_range, fchown when needed, fchmod,
 * futimens) with no round trip to the event loop per file; a file it leaves (hardlinked, in the
 * way, failed) takes the general path. Other entries are worked on up to {@link COPY_CONCURRENCY}
 * at once (their fs calls run in libuv's threadpool): an lstat, a `copyFile` (which already gives
 * it the source's mode) and an `lutimes`, plus an `lchown` only when the owner it was created with
 * is not the wanted one and a `chmod` only when its mode is not. A directory's own metadata is set
 * once everything below it is in. A failure stops new work; the copy rejects once nothing it
 * started is still running.
 */
import { constants } from 'node:fs';
import type { Dirent, Stats } from 'node:fs';
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
import { FsError, FsErrorCode, errnoOf, lstatOrUndefined } from '@kiln/layers';
import { copyFiles, mknod } from '@kiln/sys';
import { goMatch, splitWildcards } from './match.js';
import { mkdirAllResolved } from './ops.js';
import type { Owner } from './ops.js';
import { EMPTY_MATCH_INFO, PatternMatcher } from './patterns.js';
import type { MatchInfo } from './patterns.js';
import { cleanRootPath, displayPath, resolveInRoot } from '@kiln/layers';
import { readTreeXattrs, writeXattrs, xattrTarget } from '@kiln/layers';
import type { XattrTarget, Xattrs } from '@kiln/layers';

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

/**
 * How many entries one copy works on at once. Their fs calls queue in libuv's threadpool, so more
 * than a few times its size buys nothing; a directory being walked does not hold a slot while its
 * children are copied, so nesting never waits on itself.
 */
export const COPY_CONCURRENCY = 32;

/** Plain files copied by one {@link copyFiles} job (one thread-pool round trip). */
export const COPY_BATCH = 128;

const byName = (a: Dirent, b: Dirent): number => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

interface DirFrame {
  src: string;
  dst: string;
  stat: Stats;
  /** Whether the destination directory exists (created by this copy or found). */
  exists: boolean;
  /** Whether this copy created it (its metadata is then set once its children are in). */
  created: boolean;
  /** Makes it exist; shared by the siblings that need it (set by the first). */
  ready?: Promise<void>;
  /**
   * The group an entry created in it gets (its own when it is setgid, else the process's), or
   * undefined when not known (then every entry is chowned).
   */
  newGid?: number | undefined;
}

/**
 * Counting slots for {@link COPY_CONCURRENCY}, shared by every directory of one copy (waiters are
 * served in order). Not `forEachLimit`: that bounds one list, and a limit per directory would
 * multiply down a tree.
 */
class Slots {
  private readonly waiters: (() => void)[] = [];

  constructor(private free: number) {}

  async acquire(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  release(): void {
    const next = this.waiters.shift();
    if (next !== undefined) next();
    else this.free++;
  }
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
  // The directory the copied entry lands in (already a real directory: made or resolved above).
  const into: DirFrame = {
    src: srcHost,
    dst: posix.dirname(dstHost),
    stat: srcStat,
    exists: true,
    created: false,
  };
  if (dstHost !== dstRoot) {
    const st = await lstatOrUndefined(into.dst);
    if (st?.isDirectory()) into.newGid = copier.newGidIn(st, st.mode);
  }
  await copier.copyTree(srcHost, dstHost, into);
  await copier.finishXattrs();
}

/** `stat` of a host path inside root, following a final symlink only while it stays inside root. */
async function statInRoot(root: string, host: string): Promise<Stats | undefined> {
  const st = await lstatOrUndefined(host);
  if (st === undefined || !st.isSymbolicLink()) return st;
  return lstatOrUndefined(await resolveInRoot(root, displayPath(root, host)));
}

/** One entry to copy: where it is, where it goes, and what its parents decided. */
interface Job {
  src: string;
  /** Path below the copied source ('' for the source itself), matched against the patterns. */
  rel: string;
  target: string;
  overwriteMeta: boolean;
  incParent: MatchInfo;
  excParent: MatchInfo;
  /**
   * The directories on the way that were deferred because only part of them is included: they
   * are created when something inside them is copied.
   */
  parents: DirFrame[];
  /** The directory the entry is created in. */
  into: DirFrame;
}

class TreeCopier {
  private readonly inodes = new Map<string, Promise<string>>();
  private readonly include: PatternMatcher | undefined;
  private readonly exclude: PatternMatcher | undefined;
  private readonly chownAll: boolean;
  private readonly uid = process.geteuid?.() ?? -1;
  private readonly gid = process.getegid?.() ?? -1;
  private readonly slots = new Slots(COPY_CONCURRENCY);
  /** Set by the first failure: no new entry is started. */
  private failed = false;
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

  /** Copies host `src` (already inside the source root) to host `target`, created in `into`. */
  async copyTree(src: string, target: string, into: DirFrame): Promise<void> {
    const job: Job = {
      src,
      rel: '',
      target,
      overwriteMeta: false,
      incParent: EMPTY_MATCH_INFO,
      excParent: EMPTY_MATCH_INFO,
      parents: [],
      into,
    };
    await this.slots.acquire();
    await this.run(job);
  }

  /** The group of what is created in a directory of `st` whose mode is (or is about to be) `mode`. */
  newGidIn(st: Stats, mode: number): number {
    return mode & 0o2000 ? st.gid : this.gid;
  }

  /** Runs one job that holds a slot; the slot is given back once the job's own fs calls are done. */
  private async run(job: Job): Promise<void> {
    let held = true;
    const release = (): void => {
      if (held) this.slots.release();
      held = false;
    };
    try {
      await this.copyEntry(job, release);
    } catch (err) {
      this.failed = true;
      throw err;
    } finally {
      release();
    }
  }

  /**
   * Copies one entry. A directory calls `release` once it is made and read, copies its children
   * (each started once a slot is free), then sets its own metadata.
   */
  private async copyEntry(job: Job, release: () => void): Promise<void> {
    const { src, rel, target, overwriteMeta, parents } = job;
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
        const r = this.include.matchesUsingParentResults(rel, job.incParent);
        incInfo = r.info;
        if (!r.matched) {
          if (!st.isDirectory() || !this.mayIncludeBelow(rel)) return;
          full = false;
        }
      }
      if (this.exclude !== undefined) {
        const r = this.exclude.matchesUsingParentResults(rel, job.excParent);
        excInfo = r.info;
        if (r.matched && !this.exceptionBelow(rel, st)) return;
      }
    }

    if (st.isDirectory()) {
      const frame: DirFrame = { src, dst: target, stat: st, exists: false, created: false };
      const chain = [...parents, frame];
      if (full) await this.ensureDirs(chain, job.into, overwriteMeta);
      const names = (await readdir(src, { withFileTypes: true })).sort(byName);
      release();
      await this.copyChildren(names, {
        ...job,
        overwriteMeta: true,
        incParent: incInfo,
        excParent: excInfo,
        parents: full ? [] : chain,
        into: full ? frame : job.into,
      });
      if (frame.created || (frame.exists && overwriteMeta && full)) {
        await this.slots.acquire();
        try {
          await this.copyInfo(st, target, rel, undefined, true);
        } finally {
          this.slots.release();
        }
      }
      return;
    }

    await this.ensureDirs(parents, job.into, true);
    const into = parents.at(-1) ?? job.into;
    let created = 0o7777 & st.mode; // the mode copyFile gives; others are chmod'ed below
    if (st.isFile()) {
      const key = `${st.dev}:${st.ino}`;
      const first = st.nlink > 1 ? this.inodes.get(key) : undefined;
      if (first !== undefined) {
        const path = await first;
        await this.createExclusive(target, () => link(path, target));
        return; // shares the first copy's inode and metadata
      }
      let copied: ((path: string) => void) | undefined;
      let failed: ((err: unknown) => void) | undefined;
      if (st.nlink > 1) {
        const done = new Promise<string>((resolve, reject) => {
          copied = resolve;
          failed = reject;
        });
        done.catch(() => undefined); // a later link reports it; none may come
        this.inodes.set(key, done);
      }
      try {
        await this.createExclusive(target, () => copyFile(src, target, constants.COPYFILE_EXCL));
      } catch (err) {
        failed?.(err);
        throw err;
      }
      copied?.(target);
    } else if (st.isSymbolicLink()) {
      const to = await readlink(src);
      await this.createExclusive(target, () => symlink(to, target));
    } else if (st.isCharacterDevice() || st.isBlockDevice()) {
      await this.clearFileTarget(target);
      const major = Math.floor(st.rdev / 256) & 0xfff;
      const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
      mknod(target, (st.mode & constants.S_IFMT) | 0o600, major, minor);
      created = -1;
    } else if (st.isFIFO()) {
      await this.clearFileTarget(target);
      mknod(target, constants.S_IFIFO | 0o600);
      created = -1;
    } else {
      throw new FsError(FsErrorCode.Conflict, 'cannot copy a socket', {
        path: displayPath(this.srcRoot, src),
      });
    }
    await this.copyInfo(st, target, rel, { gid: into.newGid, mode: created }, false);
  }

  /**
   * Starts a job per child as slots free up; settles once all have, with the first failure.
   * Plain files that need nothing but a copy (no patterns to match, no xattrs, nothing deferred
   * on the way) go in batches of {@link COPY_BATCH} to {@link copyFiles}, a batch holding one
   * slot; what a batch leaves (a hardlinked or replaced file, an error) takes the general path.
   */
  private async copyChildren(entries: Dirent[], dir: Job): Promise<void> {
    const jobs: Promise<void>[] = [];
    const childOf = (name: string): Job => ({
      ...dir,
      src: `${dir.src}/${name}`,
      rel: dir.rel === '' ? name : `${dir.rel}/${name}`,
      target: `${dir.target}/${name}`,
    });
    const bulk = this.include === undefined && this.exclude === undefined && !dir.parents.length;
    let batch: Job[] = [];
    const flush = async (): Promise<void> => {
      const b = batch;
      batch = [];
      await this.slots.acquire();
      if (this.failed) {
        this.slots.release();
        return;
      }
      jobs.push(this.copyBatch(b));
    };
    for (const e of entries) {
      if (bulk && e.isFile()) {
        const job = childOf(e.name);
        if (!this.xattrs.has(job.rel)) {
          batch.push(job);
          if (batch.length >= COPY_BATCH) await flush();
          if (this.failed) break;
          continue;
        }
      }
      await this.slots.acquire();
      if (this.failed) {
        this.slots.release();
        break;
      }
      jobs.push(this.run(childOf(e.name)));
    }
    if (batch.length > 0 && !this.failed) await flush();
    const failure = (await Promise.allSettled(jobs)).find((r) => r.status === 'rejected');
    if (failure !== undefined) throw failure.reason;
  }

  /** Copies a batch of plain files (holding one slot); the files it leaves take the general path. */
  private async copyBatch(batch: Job[]): Promise<void> {
    let results: number[];
    try {
      results = await copyFiles(
        batch.map((j) => j.src),
        batch.map((j) => j.target),
        {
          chown: this.chownAll,
          owner: this.opts.owner,
          mode: this.opts.mode === undefined ? undefined : this.opts.mode & 0o7777,
          time: this.opts.time,
        },
      );
    } catch (err) {
      this.failed = true;
      throw err;
    } finally {
      this.slots.release();
    }
    const rest: Promise<void>[] = [];
    for (let i = 0; i < batch.length; i++) {
      if (results[i] === 0) continue;
      await this.slots.acquire();
      if (this.failed) {
        this.slots.release();
        break;
      }
      rest.push(this.run(batch[i]!));
    }
    const failure = (await Promise.allSettled(rest)).find((r) => r.status === 'rejected');
    if (failure !== undefined) throw failure.reason;
  }

  /**
   * Creates a non-directory with `create`, which fails with EEXIST rather than follow or reuse
   * anything at `target`; then what is in the way is removed and it is created again.
   */
  private async createExclusive(target: string, create: () => Promise<void>): Promise<void> {
    try {
      await create();
    } catch (err) {
      if (errnoOf(err) !== 'EEXIST') throw err;
      await this.clearFileTarget(target);
      await create();
    }
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

  /**
   * Makes the directories of `chain` that do not exist yet, outermost first (`into` holds the
   * first). Siblings share a deferred directory: the first to need it makes it, the others wait.
   */
  private async ensureDirs(
    chain: DirFrame[],
    into: DirFrame,
    overwriteMeta: boolean,
  ): Promise<void> {
    let parent = into;
    for (const d of chain) {
      const p = parent;
      await (d.ready ??= this.ensureDir(d, p, overwriteMeta));
      parent = d;
    }
  }

  private async ensureDir(d: DirFrame, parent: DirFrame, overwriteMeta: boolean): Promise<void> {
    const st = await lstatOrUndefined(d.dst);
    if (st?.isDirectory()) {
      const mode = overwriteMeta ? this.modeOf(d.stat) : st.mode;
      if (overwriteMeta) await chmod(d.dst, mode);
      d.newGid = this.newGidIn(st, mode);
      d.exists = true;
      return;
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
    // A directory made in a setgid one gets its group and its setgid bit: what is made in it then
    // gets the same group as in its parent.
    d.newGid = parent.newGid;
    d.exists = true;
    d.created = true;
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

  /**
   * Sets owner, mode, times and (queued) xattrs of a copied entry. `made` tells what it was created
   * with when known: the group it got (undefined: unknown) and its mode (-1: unknown); a chown or
   * chmod that would change nothing is skipped.
   */
  private async copyInfo(
    st: Stats,
    target: string,
    rel: string,
    made: { gid: number | undefined; mode: number } | undefined,
    isDir: boolean,
  ): Promise<void> {
    const xattrs = this.xattrs.get(rel);
    if (xattrs !== undefined) this.pendingXattrs.push(await xattrTarget(target, xattrs));
    const mode = this.modeOf(st);
    if (this.chownAll) {
      const o = this.opts.owner ?? { uid: st.uid, gid: st.gid };
      if (
        made === undefined ||
        made.gid === undefined ||
        o.uid !== this.uid ||
        o.gid !== made.gid
      ) {
        await lchown(target, o.uid, o.gid);
      }
    }
    // After chown, which clears setuid/setgid (so set-id modes are always set; a write by a
    // non-root copy clears them too). Symlinks have no mode of their own on Linux.
    const modeSet = made !== undefined && made.mode === mode && (mode & 0o6000) === 0;
    if (!st.isSymbolicLink() && (isDir || !modeSet)) await chmod(target, mode);
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
