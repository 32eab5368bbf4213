/**
 * `.dockerignore` files: BuildKit's `dockerignore.ReadAll` (moby/patternmatcher/ignorefile) and
 * dockerui's choice between `<Dockerfile>.dockerignore` and `.dockerignore`.
 */
import { goClean } from './patterns/clean.js';
import { PatternMatcher } from './patterns/patternmatcher.js';

/**
 * Reads the patterns of a `.dockerignore`: one per line, `#` comments (only at the very start of a
 * line) and blank lines skipped, surrounding space trimmed, each pattern cleaned, a leading `/`
 * dropped (patterns are relative to the context), `!` kept in front of exceptions.
 */
export function readDockerignore(content: string | Uint8Array): string[] {
  let text = typeof content === 'string' ? content : Buffer.from(content).toString('utf8');
  if (text.startsWith('\ufeff')) text = text.slice(1);
  const out: string[] = [];
  // bufio.Scanner's ScanLines: split on \n, drop one trailing \r.
  const lines = text.split('\n');
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  for (let line of lines) {
    if (line.endsWith('\r')) line = line.slice(0, -1);
    if (line.startsWith('#')) continue;
    let pattern = line.trim();
    if (pattern === '') continue;
    const invert = pattern.startsWith('!');
    if (invert) pattern = pattern.slice(1).trim();
    if (pattern.length > 0) {
      pattern = goClean(pattern);
      if (pattern.length > 1 && pattern.startsWith('/')) pattern = pattern.slice(1);
    }
    if (invert) pattern = '!' + pattern;
    out.push(pattern);
  }
  return out;
}

/** A context's files as a frontend sees them: name (relative to the context) to content. */
export type ContextFiles =
  ReadonlyMap<string, string | Uint8Array> | Readonly<Record<string, string | Uint8Array>>;

/**
 * Picks the ignore file for a Dockerfile as dockerui does: `<dockerfile>.dockerignore` (next to the
 * Dockerfile, e.g. `build/app.Dockerfile.dockerignore`) wins over the context's `.dockerignore`.
 * Returns the chosen file's name and patterns, or undefined when neither exists.
 */
export function selectDockerignore(
  files: ContextFiles,
  dockerfileName = 'Dockerfile',
): { name: string; patterns: string[] } | undefined {
  const get = (k: string): string | Uint8Array | undefined =>
    files instanceof Map
      ? (files as ReadonlyMap<string, string | Uint8Array>).get(k)
      : (files as Record<string, string | Uint8Array>)[k];
  const specific = goClean(dockerfileName) + '.dockerignore';
  for (const name of [specific, '.dockerignore']) {
    const content = get(name);
    if (content !== undefined) return { name, patterns: readDockerignore(content) };
  }
  return undefined;
}

/**
 * A filter over context paths with BuildKit's semantics: a path is excluded when it or one of its
 * parent directories matches, unless a later `!` pattern re-includes it.
 */
export interface ContextMatcher {
  /** Whether `path` (relative to the context, `/`-separated) is excluded. */
  excludes(path: string): boolean;
  /**
   * Whether a directory must still be walked although it is excluded: an exception pattern might
   * re-include something below it (fsutil's walker does the same check).
   */
  mayIncludeBelow(dir: string): boolean;
  readonly patterns: readonly string[];
}

/** Builds a ContextMatcher from `.dockerignore` patterns (throws BadPatternError if malformed). */
export function dockerignoreMatcher(patterns: readonly string[]): ContextMatcher {
  const pm = new PatternMatcher(patterns);
  return {
    patterns,
    excludes(path: string): boolean {
      const p = goClean(path.replace(/^\/+/, ''));
      if (p === '.') return false;
      return pm.matchesOrParentMatches(p);
    },
    mayIncludeBelow(dir: string): boolean {
      if (!pm.exclusions) return false;
      const d = goClean(dir.replace(/^\/+/, ''));
      // An exception whose pattern starts inside `dir` (or could, through a wildcard) may re-include.
      return pm.patterns.some((p) => {
        if (!p.exclusion) return false;
        const dirs = d.split('/');
        for (let i = 0; i < dirs.length && i < p.dirs.length; i++) {
          const seg = p.dirs[i]!;
          if (seg === '**') return true;
          if (!segmentMayMatch(seg, dirs[i]!)) return false;
        }
        return true;
      });
    },
  };
}

function segmentMayMatch(pattern: string, name: string): boolean {
  if (!/[*?[\\]/.test(pattern)) return pattern === name;
  try {
    return new PatternMatcher([pattern]).matchesExact(name);
  } catch {
    // A segment that does not compile on its own (a class spanning `/`): assume it may match.
    return true;
  }
}
