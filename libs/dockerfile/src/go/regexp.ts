/**
 * The few `regexp` behaviours of Go that differ from JavaScript and that BuildKit relies on:
 * `Split` with a limit and `ReplaceAllString` (its empty-match rule and `$` template expansion).
 */

function globalCopy(re: RegExp): RegExp {
  return re.global ? new RegExp(re.source, re.flags) : new RegExp(re.source, re.flags + 'g');
}

/** Go's `(*Regexp).Split(s, n)`. */
export function goSplit(re: RegExp, s: string, n: number): string[] {
  if (n === 0) return [];
  if (re.source.length > 0 && s.length === 0) return [''];
  const g = globalCopy(re);
  const matches: [number, number][] = [];
  let m: RegExpExecArray | null;
  while ((m = g.exec(s)) !== null) {
    const start = m.index;
    const end = start + m[0].length;
    if (end === start) g.lastIndex = end + 1;
    matches.push([start, end]);
    if (n > 0 && matches.length >= n) break;
  }
  const out: string[] = [];
  let beg = 0;
  let end = 0;
  for (const [a, b] of matches) {
    if (n > 0 && out.length === n - 1) break;
    end = a;
    if (b !== 0) out.push(s.slice(beg, end));
    beg = b;
  }
  if (end !== s.length) out.push(s.slice(beg));
  return out;
}

function isNameChar(ch: string): boolean {
  return /^[\p{L}\p{Nd}_]$/u.test(ch);
}

/**
 * Go's `(*Regexp).Expand` for a match `m` of a regexp without named groups: `$$` is `$`, `$n` and
 * `${n}` are group n (`$0` the whole match), any other valid name is empty, a malformed `$` stays.
 */
function goExpand(template: string, m: RegExpExecArray): string {
  let out = '';
  let rest = template;
  for (;;) {
    const i = rest.indexOf('$');
    if (i < 0) break;
    out += rest.slice(0, i);
    rest = rest.slice(i + 1);
    if (rest.startsWith('$')) {
      out += '$';
      rest = rest.slice(1);
      continue;
    }
    let str = rest;
    let brace = false;
    if (str.startsWith('{')) {
      brace = true;
      str = str.slice(1);
    }
    let j = 0;
    for (const ch of str) {
      if (!isNameChar(ch)) break;
      j += ch.length;
    }
    if (j === 0 || (brace && str[j] !== '}')) {
      out += '$';
      continue;
    }
    const name = str.slice(0, j);
    rest = str.slice(brace ? j + 1 : j);
    let num = -1;
    if (/^[0-9]+$/.test(name) && !(name.length > 1 && name.startsWith('0')) && name.length < 9) {
      num = Number(name);
    }
    if (num >= 0 && num < m.length) out += m[num] ?? '';
  }
  return out + rest;
}

/**
 * Go's `(*Regexp).ReplaceAllString`: `repl` is a template (see goExpand). Stops early, with a
 * result longer than `maxLength`, once the result grows past it (the caller refuses it).
 */
export function goReplaceAll(re: RegExp, src: string, repl: string, maxLength = Infinity): string {
  const g = globalCopy(re);
  let out = '';
  let lastMatchEnd = 0;
  let searchPos = 0;
  while (searchPos <= src.length) {
    g.lastIndex = searchPos;
    const m = g.exec(src);
    if (m === null) break;
    const a0 = m.index;
    const a1 = a0 + m[0].length;
    out += src.slice(lastMatchEnd, a0);
    // No replacement for an empty match right after the previous match.
    if (a1 > lastMatchEnd || a0 === 0) out += goExpand(repl, m);
    if (out.length > maxLength) return out; // the caller refuses it; stop growing it
    lastMatchEnd = a1;
    const cp = src.codePointAt(searchPos);
    const width = cp === undefined ? 1 : cp > 0xffff ? 2 : 1;
    if (searchPos + width > a1) searchPos += width;
    else if (searchPos + 1 > a1) searchPos++;
    else searchPos = a1;
  }
  return out + src.slice(lastMatchEnd);
}
