/**
 * moby/patternmatcher semantics for include/exclude patterns of copies and local sources: the one
 * port lives in `@kiln/dockerfile` (it also serves `.dockerignore`); this module adapts it to the
 * worker's filesystem errors (a malformed pattern is an {@link FsErrorCode.BadPattern} FsError).
 */
import { posix } from 'node:path';
import {
  BadPatternError,
  PatternMatcher as BasePatternMatcher,
  matchesOrParentMatches as baseMatchesOrParentMatches,
} from '@kiln/dockerfile';
import type { MatchInfo } from '@kiln/dockerfile';
import { FsError, FsErrorCode } from '@kiln/layers';

export { Pattern } from '@kiln/dockerfile';
export type { MatchInfo };

/** The match info of a walk's top entries (no parent results yet). */
export const EMPTY_MATCH_INFO: MatchInfo = { parentMatched: [] };

function asFsError(err: unknown, patterns: readonly string[]): unknown {
  if (!(err instanceof BadPatternError)) return err;
  return new FsError(FsErrorCode.BadPattern, err.message, {
    cause: err,
    details: { patterns: patterns.join(' ') },
  });
}

/** Cleans one pattern line the way BuildKit does for `.dockerignore` and include/exclude lists. */
export function cleanPattern(p: string): string {
  let c = posix.normalize(p);
  if (c.length > 1 && c.endsWith('/')) c = c.slice(0, -1);
  if (c.length > 1 && c.startsWith('/')) c = c.slice(1);
  return c;
}

/**
 * Cleans each pattern first (a leading `/` or `./` dropped, as fsutil does for copy and local
 * source filters; `.dockerignore` lines arrive already cleaned by its reader).
 */
function cleanAll(patterns: readonly string[]): string[] {
  return patterns.map((raw) => {
    const p = raw.trim();
    if (p === '') return p;
    if (!p.startsWith('!')) return cleanPattern(p);
    const rest = p.slice(1).trim();
    return rest === '' ? p : `!${cleanPattern(rest)}`;
  });
}

/** An ordered list of patterns; later ones override earlier ones, `!` ones re-include. */
export class PatternMatcher extends BasePatternMatcher {
  /** Throws {@link FsErrorCode.BadPattern} for a malformed pattern or a lone `!`. */
  constructor(patterns: readonly string[]) {
    try {
      super(cleanAll(patterns));
    } catch (err) {
      throw asFsError(err, patterns);
    }
  }
}

/** patternmatcher.MatchesOrParentMatches on a cleaned path; `.` never matches. */
export function matchesOrParentMatches(file: string, patterns: readonly string[]): boolean {
  try {
    return baseMatchesOrParentMatches(file, cleanAll(patterns));
  } catch (err) {
    throw asFsError(err, patterns);
  }
}
