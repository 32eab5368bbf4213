/**
 * Go's `path/filepath.Match` (Unix flavour), byte-for-byte in behaviour: `*` any run of non-`/`
 * characters, `?` one non-`/` character, `[...]` a class with ranges and `^` negation, `\` escapes.
 * Used for `allowWildcard` copies and removals, exactly as BuildKit resolves them.
 */
import { FsError, FsErrorCode } from '@kiln/layers';

class BadPattern extends Error {}

/** Whether `name` matches the shell `pattern`; throws {@link FsErrorCode.BadPattern} on a malformed one. */
export function goMatch(pattern: string, name: string): boolean {
  try {
    return matchRunes(Array.from(pattern), Array.from(name));
  } catch (err) {
    if (err instanceof BadPattern) {
      throw new FsError(FsErrorCode.BadPattern, 'syntax error in pattern', {
        cause: err,
        details: { pattern },
      });
    }
    throw err;
  }
}

/** Whether `pattern` is well-formed for {@link goMatch}. */
export function isValidPattern(pattern: string): boolean {
  try {
    matchRunes(Array.from(pattern), ['.']);
    return true;
  } catch (err) {
    if (err instanceof BadPattern) return false;
    throw err;
  }
}

function matchRunes(pattern: string[], name: string[]): boolean {
  outer: while (pattern.length > 0) {
    const { star, chunk, rest } = scanChunk(pattern);
    pattern = rest;
    if (star && chunk.length === 0) return !name.includes('/');
    const first = matchChunk(chunk, name);
    if (first !== undefined && (first.length === 0 || pattern.length > 0)) {
      name = first;
      continue;
    }
    if (star) {
      for (let i = 0; i < name.length && name[i] !== '/'; i++) {
        const t = matchChunk(chunk, name.slice(i + 1));
        if (t !== undefined) {
          if (pattern.length === 0 && t.length > 0) continue;
          name = t;
          continue outer;
        }
      }
    }
    // No match: still report a syntax error anywhere in the rest of the pattern.
    while (pattern.length > 0) {
      const next = scanChunk(pattern);
      pattern = next.rest;
      matchChunk(next.chunk, []);
    }
    return false;
  }
  return name.length === 0;
}

function scanChunk(pattern: string[]): { star: boolean; chunk: string[]; rest: string[] } {
  let star = false;
  let start = 0;
  while (start < pattern.length && pattern[start] === '*') {
    start++;
    star = true;
  }
  let inRange = false;
  let i = start;
  scan: for (; i < pattern.length; i++) {
    switch (pattern[i]) {
      case '\\':
        if (i + 1 < pattern.length) i++;
        break;
      case '[':
        inRange = true;
        break;
      case ']':
        inRange = false;
        break;
      case '*':
        if (!inRange) break scan;
        break;
    }
  }
  return { star, chunk: pattern.slice(start, i), rest: pattern.slice(i) };
}

/** Matches `chunk` at the start of `s`; returns what is left of `s`, or undefined on mismatch. */
function matchChunk(chunk: string[], s: string[]): string[] | undefined {
  let failed = false;
  let ci = 0;
  let si = 0;
  while (ci < chunk.length) {
    if (!failed && si >= s.length) failed = true;
    const c = chunk[ci]!;
    if (c === '[') {
      let r = '';
      if (!failed) r = s[si++]!;
      ci++;
      let negated = false;
      if (chunk[ci] === '^') {
        negated = true;
        ci++;
      }
      let match = false;
      let nrange = 0;
      for (;;) {
        if (ci < chunk.length && chunk[ci] === ']' && nrange > 0) {
          ci++;
          break;
        }
        const lo = getEsc(chunk, ci);
        ci = lo.next;
        let hi = lo.r;
        if (chunk[ci] === '-') {
          const h = getEsc(chunk, ci + 1);
          ci = h.next;
          hi = h.r;
        }
        if (!failed && cp(lo.r) <= cp(r) && cp(r) <= cp(hi)) match = true;
        nrange++;
      }
      if (match === negated) failed = true;
    } else if (c === '?') {
      if (!failed) {
        if (s[si] === '/') failed = true;
        si++;
      }
      ci++;
    } else {
      let lit = c;
      if (c === '\\') {
        ci++;
        if (ci >= chunk.length) throw new BadPattern();
        lit = chunk[ci]!;
      }
      if (!failed) {
        if (lit !== s[si]) failed = true;
        si++;
      }
      ci++;
    }
  }
  return failed ? undefined : s.slice(si);
}

function getEsc(chunk: string[], i: number): { r: string; next: number } {
  if (i >= chunk.length || chunk[i] === '-' || chunk[i] === ']') throw new BadPattern();
  if (chunk[i] === '\\') {
    i++;
    if (i >= chunk.length) throw new BadPattern();
  }
  const r = chunk[i]!;
  if (i + 1 >= chunk.length) throw new BadPattern();
  return { r, next: i + 1 };
}

function cp(r: string): number {
  return r.codePointAt(0) ?? -1;
}

/** Whether a path component contains an unescaped wildcard character (fsutil's containsWildcards). */
export function hasWildcards(name: string): boolean {
  for (let i = 0; i < name.length; i++) {
    const ch = name[i];
    if (ch === '\\') i++;
    else if (ch === '*' || ch === '?' || ch === '[') return true;
  }
  return false;
}

/**
 * Splits a cleaned absolute path at its first component holding a wildcard: the fixed directory
 * part and the pattern part (fsutil's splitWildcards). `pattern` is '' when there is no wildcard.
 */
export function splitWildcards(p: string): { dir: string; pattern: string } {
  const parts = p.split('/').filter((c) => c !== '');
  const i = parts.findIndex(hasWildcards);
  if (i < 0) return { dir: `/${parts.join('/')}`, pattern: '' };
  return { dir: `/${parts.slice(0, i).join('/')}`, pattern: parts.slice(i).join('/') };
}
