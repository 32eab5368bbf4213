/**
 * Shell wildcard patterns for `${v#p}`, `${v%p}` and `${v/p/r}`, compiled to regular expressions as
 * BuildKit does (`?` one character, `*` the shortest or longest run, no bracket expressions).
 */

class PatternError extends Error {}

export { PatternError };

/** Go's `.` (anything but a newline); JavaScript's `.` also stops at \r, U+2028 and U+2029. */
const ANY = '[^\\n]';

/**
 * Converts a shell pattern to an equivalent RegExp (flags `u`). `\` escapes `*`, `?` and `\`; before
 * `}` or `/` it only protected the `${}` syntax and is dropped; any other escape is invalid.
 */
export function convertShellPatternToRegex(
  pattern: string,
  greedy: boolean,
  anchored: boolean,
): RegExp {
  const runes = [...pattern];
  let out = anchored ? '^' : '';
  const star = greedy ? `${ANY}*` : `${ANY}*?`;
  for (let i = 0; i < runes.length; i++) {
    let tok = runes[i] ?? '';
    switch (tok) {
      case '*':
        out += star;
        continue;
      case '?':
        out += ANY;
        continue;
      case '\\': {
        const peek = runes[i + 1];
        if (peek === '}' || peek === '/') continue;
        out += '\\';
        i++;
        tok = runes[i] ?? '\ufffd';
        if (tok !== '*' && tok !== '?' && tok !== '\\') {
          throw new PatternError(`invalid escape '\\${tok}'`);
        }
        break;
      }
      case '[':
      case ']':
      case '{':
      case '}':
      case '.':
      case '+':
      case '(':
      case ')':
      case '|':
      case '^':
      case '$':
        out += '\\';
        break;
      default:
        // A lone surrogate cannot appear in a `u` regexp as itself; escape it as a code point.
        if (tok.length === 1 && /[\ud800-\udfff]/.test(tok)) {
          out += `\\u{${tok.charCodeAt(0).toString(16)}}`;
          continue;
        }
    }
    out += tok;
  }
  return new RegExp(out, 'u');
}

/** Reverses a pattern without splitting escapes: `a\*c` becomes `c\*a`. */
export function reversePattern(pattern: string): string {
  const runes = [...pattern];
  const out = new Array<string>(runes.length).fill('');
  const lastIdx = runes.length - 1;
  for (let i = 0; i <= lastIdx;) {
    const tok = runes[i] ?? '';
    const outIdx = lastIdx - i;
    if (tok === '\\' && i !== lastIdx) {
      out[outIdx - 1] = tok;
      out[outIdx] = runes[i + 1] ?? '';
      i += 2;
    } else {
      out[outIdx] = tok;
      i++;
    }
  }
  return out.join('');
}

/** Reverses a string rune by rune. */
export function reverseString(s: string): string {
  return [...s].reverse().join('');
}

function invalidPattern(word: string, err: unknown): PatternError {
  const msg = err instanceof Error ? err.message : String(err);
  return new PatternError(`invalid pattern (${word}) in substitution: ${msg}`);
}

/** `${value#word}` (or `##` when greedy): removes the shortest (longest) matching prefix. */
export function trimPrefix(word: string, value: string, greedy: boolean): string {
  let re: RegExp;
  try {
    re = convertShellPatternToRegex(word, greedy, true);
  } catch (err) {
    throw invalidPattern(word, err);
  }
  const m = re.exec(value);
  return m ? value.slice(m.index + m[0].length) : value;
}

/**
 * `${value%word}` (or `%%`): a regexp cannot find the shortest rightmost match, so both the pattern
 * and the value are reversed and the prefix is trimmed instead.
 */
export function trimSuffix(pattern: string, value: string, greedy: boolean): string {
  return reverseString(trimPrefix(reversePattern(pattern), reverseString(value), greedy));
}
