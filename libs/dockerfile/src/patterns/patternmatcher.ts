/**
 * A port of `github.com/moby/patternmatcher`: the path patterns of `.dockerignore`, of `COPY
 * --exclude` and of a context's include/exclude filters. Patterns are slash-separated; `*` and `?`
 * never cross a `/`, `**` crosses any number of directories, `[...]` is a class, `\` escapes, and a
 * leading `!` re-includes what an earlier pattern excluded. The last matching pattern wins.
 */
import { goClean } from './clean.js';

/** A pattern that cannot be compiled (Go's `filepath.ErrBadPattern`, or `illegal exclusion pattern`). */
export class BadPatternError extends Error {
  constructor(message = 'syntax error in pattern') {
    super(message);
    this.name = 'BadPatternError';
  }
}

type MatchType = 'exact' | 'prefix' | 'suffix' | 'regexp';

// Characters special in a regexp but plain in a filepath pattern (patternmatcher's shouldEscape).
const ESCAPE = new Set(['.', '+', '(', ')', '|', '{', '}', '$']);

/** One compiled pattern. */
export class Pattern {
  readonly exclusion: boolean;
  readonly cleanedPattern: string;
  /** The pattern split on `/`. */
  readonly dirs: string[];
  private matchType: MatchType | undefined;
  private regexp: RegExp | undefined;

  constructor(cleaned: string, exclusion: boolean) {
    this.cleanedPattern = cleaned;
    this.exclusion = exclusion;
    this.dirs = cleaned.split('/');
  }

  toString(): string {
    return this.cleanedPattern;
  }

  /** Whether `path` (slash-separated, cleaned) matches this pattern exactly. */
  match(path: string): boolean {
    if (this.matchType === undefined) this.compile();
    switch (this.matchType) {
      case 'exact':
        return path === this.cleanedPattern;
      case 'prefix':
        return path.startsWith(this.cleanedPattern.slice(0, -2));
      case 'suffix': {
        const suffix = this.cleanedPattern.slice(2);
        if (path.endsWith(suffix)) return true;
        // `**/foo` matches `foo`.
        return suffix.startsWith('/') && path === suffix.slice(1);
      }
      case 'regexp':
        return this.regexp!.test(path);
      default:
        return false;
    }
  }

  private compile(): void {
    let reg = '^';
    let type: MatchType = 'exact';
    const chars = Array.from(this.cleanedPattern);
    let pos = 0;
    const peek = (): string | undefined => chars[pos];
    for (let i = 0; pos < chars.length; i++) {
      const ch = chars[pos++]!;
      if (ch === '*') {
        if (peek() === '*') {
          pos++;
          // `**/` is `**`: eat the slash.
          if (peek() === '/') pos++;
          if (peek() === undefined) {
            // `**` at the end: like .gitignore, accept everything below.
            if (type === 'exact') type = 'prefix';
            else {
              reg += '.*';
              type = 'regexp';
            }
          } else {
            // Any number of directories, even none.
            reg += '(.*/)?';
            type = 'regexp';
          }
          if (i === 0) type = 'suffix';
        } else {
          reg += '[^/]*';
          type = 'regexp';
        }
      } else if (ch === '?') {
        reg += '[^/]';
        type = 'regexp';
      } else if (ESCAPE.has(ch)) {
        reg += '\\' + ch;
      } else if (ch === '\\') {
        if (peek() !== undefined) {
          reg += '\\' + chars[pos++]!;
          type = 'regexp';
        } else {
          reg += '\\\\';
        }
      } else if (ch === '[' || ch === ']') {
        reg += ch;
        type = 'regexp';
      } else {
        reg += ch;
      }
    }
    if (type === 'regexp') {
      reg += '$';
      try {
        this.regexp = new RegExp(reg);
      } catch (err) {
        throw new BadPatternError(`syntax error in pattern: ${(err as Error).message}`);
      }
    }
    this.matchType = type;
  }
}

/**
 * Go's `filepath.Match(pattern, ".")` only for its error: whether the pattern is well formed
 * (classes closed, ranges complete, no trailing escape).
 */
function checkPatternSyntax(p: string): void {
  const chars = Array.from(p);
  let i = 0;
  const getEsc = (): void => {
    let c = chars[i];
    if (c === undefined || c === '-' || c === ']') throw new BadPatternError();
    if (c === '\\') {
      i++;
      c = chars[i];
      if (c === undefined) throw new BadPatternError();
    }
    i++;
  };
  while (i < chars.length) {
    const c = chars[i++];
    if (c === '\\') {
      if (i >= chars.length) throw new BadPatternError();
      i++;
    } else if (c === '[') {
      if (chars[i] === '^') i++;
      for (let n = 0; ; n++) {
        if (chars[i] === ']' && n > 0) {
          i++;
          break;
        }
        getEsc();
        if (chars[i] === '-') {
          i++;
          getEsc();
        }
      }
    }
  }
}

/** Parent-match results of a directory, to pass to its children (`MatchesUsingParentResults`). */
export interface MatchInfo {
  readonly parentMatched: readonly boolean[];
}

/**
 * A list of patterns checked in order (BuildKit's `PatternMatcher`). Not safe to share across
 * concurrent mutation; matching itself is pure.
 */
export class PatternMatcher {
  readonly patterns: Pattern[] = [];
  /** Whether any pattern is an exclusion (`!...`). */
  readonly exclusions: boolean;

  /** Compiles `patterns`; throws BadPatternError for a malformed one. */
  constructor(patterns: readonly string[]) {
    let exclusions = false;
    for (const raw of patterns) {
      let p = raw.trim();
      if (p === '') continue;
      p = goClean(p);
      let exclusion = false;
      if (p.startsWith('!')) {
        if (p.length === 1) throw new BadPatternError('illegal exclusion pattern: "!"');
        exclusion = true;
        p = p.slice(1);
        exclusions = true;
      }
      checkPatternSyntax(p);
      this.patterns.push(new Pattern(p, exclusion));
    }
    this.exclusions = exclusions;
  }

  /**
   * Whether `file` matches, exactly or through one of its parent directories, and is not
   * re-included by a later exclusion (`MatchesOrParentMatches`).
   */
  matchesOrParentMatches(file: string): boolean {
    let matched = false;
    const parentPath = goDirOf(file);
    const parentDirs = parentPath.split('/');
    for (const pattern of this.patterns) {
      // An inclusion that already matched, or an exclusion that has nothing to undo, is skipped.
      if (pattern.exclusion !== matched) continue;
      let match = pattern.match(file);
      if (!match && parentPath !== '.') {
        for (let i = 0; i < parentDirs.length; i++) {
          if (pattern.match(parentDirs.slice(0, i + 1).join('/'))) {
            match = true;
            break;
          }
        }
      }
      if (match) matched = !pattern.exclusion;
    }
    return matched;
  }

  /** Whether `file` itself matches; no parent matching (`MatchesExact`). */
  matchesExact(file: string): boolean {
    let matched = false;
    for (const pattern of this.patterns) {
      if (pattern.exclusion !== matched) continue;
      if (pattern.match(file)) matched = !pattern.exclusion;
    }
    return matched;
  }

  /**
   * Like matchesOrParentMatches, but reuses the results of the parent directory, for walking a
   * tree top-down (`MatchesUsingParentResults`). Pass `undefined` for a path whose parent was not
   * matched before.
   */
  matchesUsingParentResults(
    file: string,
    parent?: MatchInfo,
  ): { matched: boolean; info: MatchInfo } {
    const parentMatched = parent?.parentMatched ?? [];
    if (parentMatched.length !== 0 && parentMatched.length !== this.patterns.length) {
      throw new Error('wrong number of values in parentMatched');
    }
    let matched = false;
    const out: boolean[] = new Array<boolean>(this.patterns.length).fill(false);
    this.patterns.forEach((pattern, i) => {
      let match = parentMatched.length !== 0 ? parentMatched[i]! : false;
      if (!match) {
        if (pattern.exclusion !== matched) return;
        match = pattern.match(file);
        if (!match && parentMatched.length === 0) {
          const parentPath = goDirOf(file);
          if (parentPath !== '.') {
            const dirs = parentPath.split('/');
            for (let j = 0; j < dirs.length; j++) {
              if (pattern.match(dirs.slice(0, j + 1).join('/'))) {
                match = true;
                break;
              }
            }
          }
        }
      }
      out[i] = match;
      if (match) matched = !pattern.exclusion;
    });
    return { matched, info: { parentMatched: out } };
  }
}

function goDirOf(p: string): string {
  const i = p.lastIndexOf('/');
  return goClean(i < 0 ? '' : p.slice(0, i + 1));
}

/**
 * Whether `file` is matched by `patterns`, directly or through a parent directory; `.` is never
 * matched (patternmatcher's `MatchesOrParentMatches`).
 */
export function matchesOrParentMatches(file: string, patterns: readonly string[]): boolean {
  const pm = new PatternMatcher(patterns);
  const f = goClean(file);
  if (f === '.') return false;
  return pm.matchesOrParentMatches(f);
}
