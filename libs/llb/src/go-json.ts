/**
 * JSON text exactly as Go's encoding/json writes strings: `"`, `\\`, \n, \r, \t get short escapes;
 * other control characters, `<`, `>`, `&`, U+2028 and U+2029 become \u00XX-style escapes; lone
 * surrogates (invalid UTF-8 in Go) become \ufffd. BuildKit stores some attributes (local include
 * patterns...) as Go-marshaled JSON, and they are part of the op bytes, so they must match.
 */
export function goJsonString(s: string): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x22) out += '\\"';
    else if (c === 0x5c) out += '\\\\';
    else if (c === 0x0a) out += '\\n';
    else if (c === 0x0d) out += '\\r';
    else if (c === 0x09) out += '\\t';
    else if (c < 0x20 || c === 0x3c || c === 0x3e || c === 0x26 || c === 0x2028 || c === 0x2029) {
      out += `\\u${c.toString(16).padStart(4, '0')}`;
    } else if (c >= 0xd800 && c <= 0xdbff) {
      const next = s.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        out += s[i]! + s[i + 1]!;
        i++;
      } else out += '\\ufffd';
    } else if (c >= 0xdc00 && c <= 0xdfff) out += '\\ufffd';
    else out += s[i]!;
  }
  return out + '"';
}

export function goJsonStringArray(a: readonly string[]): string {
  return `[${a.map(goJsonString).join(',')}]`;
}
