/**
 * moby/patternmatcher semantics, used for include/exclude patterns of copies and local sources and
 * for `.dockerignore`: `*`, `?`, `[...]`, `\` escapes, `**` across directories, `!` exceptions
 * (later patterns win), patterns cleaned like Go's `filepath.Clean` with a leading `/` dropped
 * (`/foo`, `./foo` and `foo` are the same pattern), and a pattern that matches a parent directory
 * matches everything below it.
 */
import { posix } from 'node:path';
import { FsError, FsErrorCode } from './errors.js';
import { isValidPattern } from './match.js';

type MatchType = 'exact' | 'prefix' | 'suffix' | 'regexp';

/** One compiled pattern. */
export class Pattern {
  readonly exclusion: boolean;
  /** The cleaned pattern text, without `!`. */
  readonly cleaned: string;
  /** `cleaned` split at `/`. */
  readonly dirs: readonly string[];
  private readonly type: MatchType;
  private readonly regexp: RegExp | undefined;

  constructor(cleaned: string, exclusion: boolean) {
    this.cleaned = cleaned;
    this.exclusion = exclusion;
    this.dirs = cleaned.split('/');
    const { type, regexp } = compile(cleaned);
    this.type = type;
    this.regexp = regexp;
  }

  toString(): string {
    return this.cleaned;
  }

  /** Whether `path` (slash-separated, relative) matches this pattern by itself (no parent rule). */
  match(path: string): boolean {
    switch (this.type) {
      case 'exact':
        return path === this.cleaned;
      case 'prefix':
        return path.startsWith(this.cleaned.slice(0, -2));
      case 'suffix': {
        const suffix = this.cleaned.slice(2);
        if (path.endsWith(suffix)) return true;
        return suffix.startsWith('/') && path === suffix.slice(1);
      }
      case 'regexp':
        return this.regexp!.test(path);
    }
  }
}

function shouldEscape(ch: string): boolean {
  return '.+()|{}$'.includes(ch);
}

function compile(pattern: string): { type: MatchType; regexp: RegExp | undefined } {
  let re = '^';
  let type: MatchType = 'exact';
  const chars = Array.from(pattern);
  for (let i = 0, k = 0; i < chars.length; k++) {
    const ch = chars[i++]!;
    if (ch === '*') {
      if (chars[i] === '*') {
        i++;
        if (chars[i] === '/') i++;
        if (i >= chars.length) {
          if (type === 'exact') type = 'prefix';
          else {
            re += '.*';
            type = 'regexp';
          }
        } else {
          re += '(.*/)?';
          type = 'regexp';
        }
        if (k === 0) type = 'suffix';
      } else {
        re += '[^/]*';
        type = 'regexp';
      }
    } else if (ch === '?') {
      re += '[^/]';
      type = 'regexp';
    } else if (shouldEscape(ch)) {
      re += `\\${ch}`;
    } else if (ch === '\\') {
      if (i < chars.length) {
        re += `\\${chars[i++]!}`;
        type = 'regexp';
      } else {
        re += '\\\\';
      }
    } else if (ch === '[' || ch === ']') {
      re += ch;
      type = 'regexp';
    } else {
      re += ch;
    }
  }
  if (type !== 'regexp') return { type, regexp: undefined };
  try {
    return { type, regexp: new RegExp(`${re}$`) };
  } catch (err) {
    throw new FsError(FsErrorCode.BadPattern, 'syntax error in pattern', {
      cause: err,
      details: { pattern },
    });
  }
}

/** Results for each pattern on a directory, handed to its children (patternmatcher's MatchInfo). */
export interface MatchInfo {
  readonly parentMatched: readonly boolean[];
}

export const EMPTY_MATCH_INFO: MatchInfo = { parentMatched: [] };

/** Go's `filepath.Dir`: everything before the last `/`, cleaned (`dir/file/` -> `dir/file`). */
function goDir(p: string): string {
  const i = p.lastIndexOf('/');
  if (i < 0) return '.';
  const d = posix.normalize(p.slice(0, i + 1));
  return d.length > 1 && d.endsWith('/') ? d.slice(0, -1) : d;
}

/** Cleans one pattern line the way BuildKit does for `.dockerignore` and include/exclude lists. */
export function cleanPattern(p: string): string {
  let c = posix.normalize(p);
  if (c.length > 1 && c.endsWith('/')) c = c.slice(0, -1);
  if (c.length > 1 && c.startsWith('/')) c = c.slice(1);
  return c;
}

/** An ordered list of patterns; later ones override earlier ones, `!` ones re-include. */
export class PatternMatcher {
  readonly patterns: readonly Pattern[];
  /** Whether any pattern is an exception (`!`). */
  readonly exclusions: boolean;

  /** Throws {@link FsErrorCode.BadPattern} for a malformed pattern or a lone `!`. */
  constructor(patterns: readonly string[]) {
    const out: Pattern[] = [];
    let exclusions = false;
    for (const raw of patterns) {
      let p = raw.trim();
      if (p === '') continue;
      let exclusion = false;
      if (p.startsWith('!')) {
        if (p.length === 1)
          throw new FsError(FsErrorCode.BadPattern, 'illegal exclusion pattern: "!"');
        exclusion = true;
        exclusions = true;
        p = p.slice(1).trim();
      }
      p = cleanPattern(p);
      if (!isValidPattern(p)) {
        throw new FsError(FsErrorCode.BadPattern, 'syntax error in pattern', {
          details: { pattern: raw },
        });
      }
      out.push(new Pattern(p, exclusion));
    }
    this.patterns = out;
    this.exclusions = exclusions;
  }

  /** Whether `file` itself matches (no parent-directory rule). */
  matchesExact(file: string): boolean {
    let matched = false;
    for (const p of this.patterns) {
      if (p.exclusion !== matched) continue;
      if (p.match(file)) matched = !p.exclusion;
    }
    return matched;
  }

  /** Whether `file` or one of its parent directories matches (the `.dockerignore` rule). */
  matchesOrParentMatches(file: string): boolean {
    let matched = false;
    const parent = goDir(file);
    const parentDirs = parent.split('/');
    for (const p of this.patterns) {
      if (p.exclusion !== matched) continue;
      let m = p.match(file);
      if (!m && parent !== '.') {
        for (let i = 0; i < parentDirs.length && !m; i++)
          m = p.match(parentDirs.slice(0, i + 1).join('/'));
      }
      if (m) matched = !p.exclusion;
    }
    return matched;
  }

  /**
   * Same answer as {@link matchesOrParentMatches}, but reuses the parent directory's results while
   * walking a tree: pass {@link EMPTY_MATCH_INFO} for the walk's top entries and the returned info
   * to each child.
   */
  matchesUsingParentResults(
    file: string,
    parent: MatchInfo,
  ): { matched: boolean; info: MatchInfo } {
    const parentMatched = parent.parentMatched;
    if (parentMatched.length !== 0 && parentMatched.length !== this.patterns.length) {
      throw new Error('wrong number of values in parentMatched');
    }
    let matched = false;
    const info: boolean[] = new Array<boolean>(this.patterns.length).fill(false);
    this.patterns.forEach((p, i) => {
      let m = parentMatched.length !== 0 ? parentMatched[i]! : false;
      if (!m) {
        if (p.exclusion !== matched) return;
        m = p.match(file);
        if (!m && parentMatched.length === 0) {
          const dir = goDir(file);
          if (dir !== '.') {
            const dirs = dir.split('/');
            for (let j = 0; j < dirs.length && !m; j++) m = p.match(dirs.slice(0, j + 1).join('/'));
          }
        }
      }
      info[i] = m;
      if (m) matched = !p.exclusion;
    });
    return { matched, info: { parentMatched: info } };
  }
}

/** patternmatcher.MatchesOrParentMatches on a cleaned path; `.` never matches. */
export function matchesOrParentMatches(file: string, patterns: readonly string[]): boolean {
  const pm = new PatternMatcher(patterns);
  const f = posix.normalize(file);
  if (f === '.') return false;
  return pm.matchesOrParentMatches(f);
}
