import { isPrint } from './unicode.js';
import { ESCAPE_BASE, isEscapedByte } from './utf8.js';

const HEX = '0123456789abcdef';

function hex(n: number, digits: number): string {
  let s = '';
  for (let shift = (digits - 1) * 4; shift >= 0; shift -= 4) s += HEX[(n >> shift) & 0xf] ?? '0';
  return s;
}

/**
 * Go's `strconv.Quote`: a double-quoted Go string literal. Printable runes (Go's `IsPrint`) stay
 * as they are; `\a \b \f \n \r \t \v` use their short escapes; other runes below U+0020 and DEL
 * become `\xNN`, the rest `\uNNNN` or `\UNNNNNNNN`; an invalid UTF-8 byte (decoded as an escaped
 * lone surrogate, see `utf8.ts`) becomes `\xNN`.
 */
export function goQuote(s: string): string {
  let out = '"';
  for (const ch of s) {
    let cp = ch.codePointAt(0) ?? 0;
    if (cp === 0x22 || cp === 0x5c) {
      out += '\\' + ch;
      continue;
    }
    if (cp >= 0xd800 && cp <= 0xdfff) {
      if (isEscapedByte(cp)) {
        out += '\\x' + hex(cp - ESCAPE_BASE, 2);
        continue;
      }
      // A lone surrogate is not a rune Go could hold; it would have been U+FFFD.
      cp = 0xfffd;
    }
    if (isPrint(cp)) {
      out += String.fromCodePoint(cp);
      continue;
    }
    switch (cp) {
      case 0x07:
        out += '\\a';
        break;
      case 0x08:
        out += '\\b';
        break;
      case 0x0c:
        out += '\\f';
        break;
      case 0x0a:
        out += '\\n';
        break;
      case 0x0d:
        out += '\\r';
        break;
      case 0x09:
        out += '\\t';
        break;
      case 0x0b:
        out += '\\v';
        break;
      default:
        if (cp < 0x20 || cp === 0x7f) out += '\\x' + hex(cp, 2);
        else if (cp < 0x10000) out += '\\u' + hex(cp, 4);
        else out += '\\U' + hex(cp, 8);
    }
  }
  return out + '"';
}

/** Go's `fmt.Sprintf("%q", []string{...})`: `["a" "b"]`. */
export function goQuoteSlice(items: readonly string[]): string {
  return '[' + items.map(goQuote).join(' ') + ']';
}
