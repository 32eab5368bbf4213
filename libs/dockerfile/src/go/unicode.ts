/**
 * Go's `unicode` and `strings` predicates the Dockerfile lexer and parser rely on. BuildKit decides
 * word boundaries with Go's definitions (`unicode.IsSpace` counts U+0085 and U+00A0, JavaScript's
 * `\s` counts U+FEFF and not U+0085), so every port of its logic must use these, never `\s`.
 */

/** Go's `unicode.IsSpace`. */
export function isSpace(cp: number): boolean {
  if (cp <= 0xff) {
    return (cp >= 0x09 && cp <= 0x0d) || cp === 0x20 || cp === 0x85 || cp === 0xa0;
  }
  return (
    cp === 0x1680 ||
    (cp >= 0x2000 && cp <= 0x200a) ||
    cp === 0x2028 ||
    cp === 0x2029 ||
    cp === 0x202f ||
    cp === 0x205f ||
    cp === 0x3000
  );
}

const reLetter = /^\p{L}$/u;
const reDigit = /^\p{Nd}$/u;
const rePrint = /^[\p{L}\p{M}\p{N}\p{P}\p{S}]$/u;

/** Go's `unicode.IsLetter`. */
export function isLetter(cp: number): boolean {
  if (cp < 0x80) return (cp >= 0x41 && cp <= 0x5a) || (cp >= 0x61 && cp <= 0x7a);
  if (cp >= 0xd800 && cp <= 0xdfff) return false;
  return reLetter.test(String.fromCodePoint(cp));
}

/** Go's `unicode.IsDigit` (category Nd). */
export function isDigit(cp: number): boolean {
  if (cp < 0x80) return cp >= 0x30 && cp <= 0x39;
  if (cp >= 0xd800 && cp <= 0xdfff) return false;
  return reDigit.test(String.fromCodePoint(cp));
}

/** Go's `strconv.IsPrint`: letters, marks, numbers, punctuation, symbols and the ASCII space. */
export function isPrint(cp: number): boolean {
  if (cp < 0x80) return cp >= 0x20 && cp < 0x7f;
  if (cp >= 0xd800 && cp <= 0xdfff) return false;
  return rePrint.test(String.fromCodePoint(cp));
}

/** Go's `strings.TrimLeftFunc(s, unicode.IsSpace)`. */
export function trimLeftSpace(s: string): string {
  let i = 0;
  while (i < s.length) {
    const cp = s.codePointAt(i) ?? 0;
    if (!isSpace(cp)) break;
    i += cp > 0xffff ? 2 : 1;
  }
  return i === 0 ? s : s.slice(i);
}

/** Go's `strings.TrimRightFunc(s, unicode.IsSpace)`. */
export function trimRightSpace(s: string): string {
  let end = s.length;
  while (end > 0) {
    const c = s.charCodeAt(end - 1);
    // Every Go space is in the BMP, so a trailing low surrogate is never one.
    if (!isSpace(c)) break;
    end--;
  }
  return end === s.length ? s : s.slice(0, end);
}

/** Go's `strings.TrimSpace`. */
export function trimSpace(s: string): string {
  return trimRightSpace(trimLeftSpace(s));
}

/**
 * Go's `strings.ToLower`: rune by rune simple case mapping, so no context rules (final sigma) and
 * U+0130 maps to a plain `i`.
 */
export function toLower(s: string): string {
  // eslint-disable-next-line no-control-regex
  if (/^[\u0000-\u007f]*$/.test(s)) return s.toLowerCase();
  let out = '';
  for (const ch of s) {
    const cp = ch.codePointAt(0) ?? 0;
    if (cp === 0x130) {
      out += 'i';
      continue;
    }
    const lower = ch.toLowerCase();
    out += [...lower].length === 1 ? lower : ch;
  }
  return out;
}

/** The code points of `s`, lone surrogates included as themselves. */
export function codePoints(s: string): number[] {
  const out: number[] = [];
  for (const ch of s) out.push(ch.codePointAt(0) ?? 0);
  return out;
}
