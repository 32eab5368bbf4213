/**
 * UTF-8 as Go sees it. Go strings are bytes and may hold invalid UTF-8; BuildKit reads a Dockerfile
 * as bytes, some of its parsing is byte by byte, and `strconv.Quote` prints an invalid byte as
 * `\xNN`. To keep those semantics in JavaScript strings, each byte of an invalid sequence is
 * decoded to the lone surrogate U+DC80+byte (as Python's "surrogateescape" does) and encoded back
 * to the same byte.
 */

const fatalDecoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** The first code point a lone-surrogate escape may use; U+DC80..U+DCFF stand for bytes 0x80..0xFF. */
export const ESCAPE_BASE = 0xdc00;

/** True when `cp` is a lone surrogate standing for an invalid byte. */
export function isEscapedByte(cp: number): boolean {
  return cp >= 0xdc80 && cp <= 0xdcff;
}

/** Decodes bytes, mapping each byte of an invalid sequence to U+DC80+byte. */
export function decodeUtf8(bytes: Uint8Array): string {
  try {
    return fatalDecoder.decode(bytes);
  } catch {
    // Invalid UTF-8: decode by hand, exactly as Go's utf8.DecodeRune splits it.
    return decodeSlow(bytes);
  }
}

function isCont(b: number | undefined): boolean {
  return b !== undefined && b >= 0x80 && b <= 0xbf;
}

function decodeSlow(bytes: Uint8Array): string {
  let out = '';
  let i = 0;
  const n = bytes.length;
  while (i < n) {
    const b0 = bytes[i] ?? 0;
    if (b0 < 0x80) {
      out += String.fromCharCode(b0);
      i++;
      continue;
    }
    const b1 = bytes[i + 1];
    const b2 = bytes[i + 2];
    const b3 = bytes[i + 3];
    let cp = -1;
    let width = 1;
    if (b0 >= 0xc2 && b0 <= 0xdf && isCont(b1)) {
      cp = ((b0 & 0x1f) << 6) | ((b1 ?? 0) & 0x3f);
      width = 2;
    } else if (b0 >= 0xe0 && b0 <= 0xef && b1 !== undefined) {
      const lo = b0 === 0xe0 ? 0xa0 : 0x80;
      const hi = b0 === 0xed ? 0x9f : 0xbf;
      if (b1 >= lo && b1 <= hi && isCont(b2)) {
        cp = ((b0 & 0x0f) << 12) | ((b1 & 0x3f) << 6) | ((b2 ?? 0) & 0x3f);
        width = 3;
      }
    } else if (b0 >= 0xf0 && b0 <= 0xf4 && b1 !== undefined) {
      const lo = b0 === 0xf0 ? 0x90 : 0x80;
      const hi = b0 === 0xf4 ? 0x8f : 0xbf;
      if (b1 >= lo && b1 <= hi && isCont(b2) && isCont(b3)) {
        cp =
          ((b0 & 0x07) << 18) |
          ((b1 & 0x3f) << 12) |
          (((b2 ?? 0) & 0x3f) << 6) |
          ((b3 ?? 0) & 0x3f);
        width = 4;
      }
    }
    if (cp < 0) {
      out += String.fromCharCode(ESCAPE_BASE + b0);
      i++;
    } else {
      out += String.fromCodePoint(cp);
      i += width;
    }
  }
  return out;
}

/** Encodes a string; escaped bytes go back to themselves, other lone surrogates become U+FFFD. */
export function encodeUtf8(s: string): Uint8Array {
  const out: number[] = [];
  for (const ch of s) {
    let cp = ch.codePointAt(0) ?? 0;
    if (cp >= 0xd800 && cp <= 0xdfff) {
      if (isEscapedByte(cp)) {
        out.push(cp - ESCAPE_BASE);
        continue;
      }
      cp = 0xfffd;
    }
    if (cp < 0x80) out.push(cp);
    else if (cp < 0x800) out.push(0xc0 | (cp >> 6), 0x80 | (cp & 0x3f));
    else if (cp < 0x10000)
      out.push(0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
    else
      out.push(
        0xf0 | (cp >> 18),
        0x80 | ((cp >> 12) & 0x3f),
        0x80 | ((cp >> 6) & 0x3f),
        0x80 | (cp & 0x3f),
      );
  }
  return Uint8Array.from(out);
}

/** The number of bytes `s` takes in UTF-8 (escaped bytes count one). */
export function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        n += 4;
        i++;
      } else n += 3;
    } else if (c >= 0xdc80 && c <= 0xdcff) n += 1;
    else n += 3;
  }
  return n;
}

/**
 * Replaces lone surrogates (escaped bytes included) with U+FFFD: what Go yields when it decodes
 * a string rune by rune and writes the runes back.
 */
export function toValidUtf8(s: string): string {
  return s.replace(
    /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g,
    '\ufffd',
  );
}
