/**
 * COPY and ADD (BuildKit's convert_copy.go): one FileOp with a copy action per source, from the
 * build context, a stage, a URL (`http`), a git repository (`git`) or a heredoc (an inline file);
 * `--link` copies onto scratch and merges the result on top (MergeOp), so the layer does not
 * depend on what is below it.
 */
import { posix } from 'node:path';
import { copy, git, http, merge, mkfile, scratch } from '@kiln/llb';
import type { CopyOptions, FileAction, State } from '@kiln/llb';
import type { Location, SourcesAndDest } from '../instructions/commands.js';
import { isSymbolicMode, parseUint32 } from '../instructions/go-helpers.js';
import type { DispatchOpt } from './common.js';
import {
  dfCmd,
  getEnv,
  normalizePath,
  pathRelativeToWorkingDir,
  prefixCommand,
  processCmdEnv,
  uppercaseCmd,
} from './common.js';
import type { DispatchState } from './dispatch-state.js';
import { isGitSource, isHTTPSource, parseGitRef } from './git-ref.js';
import { commitToHistory, goTime } from './image-config.js';

export interface CopyConfig {
  params: SourcesAndDest;
  excludePatterns: string[];
  source: State;
  isAddCommand: boolean;
  /** The instruction as written (its step name). */
  code: string;
  chown: string;
  chmod: string;
  link: boolean;
  keepGitDir: boolean | undefined;
  checksum: string;
  parents: boolean;
  unpack: boolean | undefined;
  /** The instruction's lines (source map). */
  location: Location;
  opt: DispatchOpt;
}

function parseChmod(chmod: string): number {
  const nonOctal = new Error(
    `invalid chmod parameter: '${chmod}'. it should be octal string and between 0 and 07777`,
  );
  const p = parseUint32(chmod, 8);
  if (p !== undefined) {
    if (p > 0o7777) throw nonOctal;
    return p;
  }
  if (/^[0-9]+$/.test(chmod)) throw nonOctal;
  if (!isSymbolicMode(chmod)) throw new Error(`invalid chmod parameter: '${chmod}'`);
  // BuildKit sends symbolic modes as FileActionCopy.modeStr, a field our LLB protocol lacks.
  throw new Error(`symbolic --chmod=${chmod} is not supported yet; use an octal mode`);
}

export function dispatchCopy(d: DispatchState, cfg: CopyConfig): void {
  const platform = d.platform ?? cfg.opt.targetPlatform;
  const dest = pathRelativeToWorkingDir(d.state, cfg.params.destPath);
  const base: CopyOptions = {};
  if (cfg.chown !== '') base.chown = cfg.chown;
  if (cfg.excludePatterns.length > 0) base.excludePatterns = cfg.excludePatterns;
  if (cfg.opt.epoch) base.createdTime = cfg.opt.epoch;
  let mode: number | undefined;
  if (cfg.chmod !== '') mode = parseChmod(cfg.chmod);
  if (mode !== undefined) base.mode = mode;

  if (cfg.checksum !== '') {
    if (!cfg.isAddCommand) throw new Error("checksum can't be specified for COPY");
    if (cfg.params.sourcePaths.length !== 1)
      throw new Error("checksum can't be specified for multiple sources");
    const src = cfg.params.sourcePaths[0]!;
    if (!isHTTPSource(src) && !isGitSource(src))
      throw new Error('checksum requires HTTP(S) or Git sources');
  }

  let commitMessage = cfg.isAddCommand ? 'ADD' : 'COPY';
  if (cfg.parents) commitMessage += ' --parents';
  if (cfg.chown !== '') commitMessage += ' --chown=' + cfg.chown;
  if (cfg.chmod !== '') commitMessage += ' --chmod=' + cfg.chmod;

  const env = getEnv(d.state);
  const name = uppercaseCmd(processCmdEnv(cfg.opt.shlex, cfg.code, env));
  const pgName = prefixCommand(d, name, d.prefixPlatform, platform, env);

  let a: FileAction | undefined;
  const add = (st: State, src: string, o: CopyOptions): void => {
    a = a ? a.copy(st, src, dest, o) : copy(st, src, dest, o);
  };

  for (const rawSrc of cfg.params.sourcePaths) {
    let src = rawSrc;
    commitMessage += ' ' + src;
    // With --keep-git-dir, ADD of any http(s) URL is a git repository.
    const gitRef = parseGitRef(src, cfg.isAddCommand && cfg.keepGitDir !== undefined);
    if (gitRef) {
      if (!cfg.isAddCommand) throw new Error("source can't be a git ref for COPY");
      let keepGitDir = cfg.keepGitDir;
      if (
        keepGitDir !== undefined &&
        gitRef.keepGitDir !== undefined &&
        keepGitDir !== gitRef.keepGitDir
      ) {
        throw new Error('inconsistent keep-git-dir configuration');
      }
      if (gitRef.keepGitDir !== undefined) keepGitDir = gitRef.keepGitDir;
      if (cfg.checksum !== '' && gitRef.checksum !== '' && cfg.checksum !== gitRef.checksum) {
        throw new Error(
          `checksum mismatch ${JSON.stringify(cfg.checksum)} != ${JSON.stringify(gitRef.checksum)}`,
        );
      }
      if (cfg.checksum !== '' || gitRef.checksum !== '') {
        // BuildKit pins the commit with git.checksum, an attribute our LLB git source lacks.
        throw new Error('--checksum for git sources is not supported yet');
      }
      // The subdirectory travels in the ref as `ref:subdir`, BuildKit's identifier form.
      const ref = gitRef.subDir !== '' ? `${gitRef.ref}:${gitRef.subDir}` : gitRef.ref;
      const st = git(gitRef.remote, ref, { keepGitDir: keepGitDir === true, customName: pgName });
      add(st, '/', { ...withMode(mode), createDestPath: true, ...base });
    } else if (isHTTPSource(src)) {
      if (!cfg.isAddCommand) throw new Error("source can't be a URL for COPY");
      // Remote archives are not unpacked (unless --unpack).
      let f = '__unnamed__';
      try {
        const b = posix.basename(new URL(src).pathname);
        if (b !== '' && b !== '.' && b !== '/') f = b;
      } catch {
        // An unparsable URL keeps the default file name, as in BuildKit.
        f = '__unnamed__';
      }
      if (
        cfg.checksum !== '' &&
        !/^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/.test(cfg.checksum)
      ) {
        throw new Error(`invalid checksum digest format`);
      }
      const st = http(src, {
        filename: f,
        customName: pgName,
        description: dfCmd(''),
        ...(cfg.checksum !== '' ? { checksum: cfg.checksum } : {}),
      });
      add(st, f, {
        ...withMode(mode),
        createDestPath: true,
        attemptUnpack: cfg.unpack ?? false,
        ...base,
      });
    } else {
      let patterns: string[] | undefined;
      if (cfg.parents) {
        // `a/./b/c`: copy b/c keeping its path below the pivot `a`.
        const pivot = src.indexOf('/./');
        let pattern: string;
        if (pivot < 0) {
          pattern = src;
          src = '/';
        } else {
          pattern = src.slice(pivot + 3);
          src = src.slice(0, pivot);
        }
        pattern = normalizePath('/', pattern, false);
        patterns = [pattern.replace(/^\//, '')];
      }
      src = normalizePath('/', src, false);
      const o: CopyOptions = {
        ...withMode(mode),
        followSymlinks: true,
        copyDirContentsOnly: true,
        attemptUnpack: cfg.unpack ?? cfg.isAddCommand,
        createDestPath: true,
        allowWildcard: true,
        allowEmptyWildcard: true,
        ...base,
      };
      if (patterns) o.includePatterns = patterns;
      add(cfg.source, src, o);
    }
  }

  for (const src of cfg.params.sourceContents) {
    commitMessage += ' <<' + src.path;
    const st = scratch().file(mkfile(src.path, 0o664, src.data), {
      customName: '[internal] preparing inline document',
      platform,
    });
    add(st, src.path, { ...withMode(mode), createDestPath: true, ...base });
  }

  commitMessage += ' ' + cfg.params.destPath;
  if (!a) throw new Error(`${cfg.isAddCommand ? 'ADD' : 'COPY'} has no source`);
  const fileOpt = { customName: pgName, ...(d.ignoreCache ? { ignoreCache: true } : {}) };

  if (cfg.link && cfg.chmod === '') {
    const pgId = cfg.opt.newId();
    d.cmdIndex--; // prefixCommand advanced it; the copy and the merge are one step
    const pgName2 = prefixCommand(d, name, d.prefixPlatform, platform, env);
    const copied = scratch().file(a, {
      ...fileOpt,
      customName: pgName2,
      platform,
      progressGroup: { id: pgId, name: pgName2, weak: true },
    });
    d.cmdIndex--;
    const linkName = prefixCommand(d, 'LINK ' + name, d.prefixPlatform, platform, env);
    const merged = merge([d.state, cfg.opt.locate(copied, cfg.location)], {
      ...fileOpt,
      progressGroup: { id: pgId, name: pgName2 },
      customName: linkName,
    });
    d.state = cfg.opt.locate(d.state.withOutput(merged.output), cfg.location);
  } else {
    d.state = cfg.opt.locate(d.state.file(a, fileOpt), cfg.location);
  }
  commitToHistory(d.image, commitMessage, true, true, goTime(cfg.opt.epoch));
}

function withMode(mode: number | undefined): CopyOptions {
  return mode === undefined ? {} : { mode };
}
