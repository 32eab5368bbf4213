/**
 * Splits a command line into words the way BuildKit's llb.Shlex does (google/shlex): whitespace
 * separates words, single quotes are literal, double quotes allow backslash escapes of `"`, `\`,
 * `$`, `` ` `` and newline, a backslash outside quotes escapes the next character, `#` at the start
 * of a word begins a comment.
 */
export function shlexSplit(input: string): string[] {
  const words: string[] = [];
  let cur = '';
  let inWord = false;
  let i = 0;
  const n = input.length;
  while (i < n) {
    const c = input[i]!;
    if (c === ' ' || c === '\t' || c === '\n' || c === '\r') {
      if (inWord) words.push(cur);
      cur = '';
      inWord = false;
      i++;
    } else if (c === '#' && !inWord) {
      while (i < n && input[i] !== '\n') i++;
    } else if (c === "'") {
      const end = input.indexOf("'", i + 1);
      if (end < 0) throw new SyntaxError('shlex: unclosed single quote');
      cur += input.slice(i + 1, end);
      inWord = true;
      i = end + 1;
    } else if (c === '"') {
      i++;
      inWord = true;
      let closed = false;
      while (i < n) {
        const d = input[i]!;
        if (d === '"') {
          closed = true;
          i++;
          break;
        }
        if (d === '\\' && i + 1 < n && '"\\$`\n'.includes(input[i + 1]!)) {
          if (input[i + 1] !== '\n') cur += input[i + 1];
          i += 2;
          continue;
        }
        cur += d;
        i++;
      }
      if (!closed) throw new SyntaxError('shlex: unclosed double quote');
    } else if (c === '\\') {
      if (i + 1 >= n) throw new SyntaxError('shlex: trailing backslash');
      if (input[i + 1] !== '\n') {
        cur += input[i + 1];
        inWord = true;
      }
      i += 2;
    } else {
      cur += c;
      inWord = true;
      i++;
    }
  }
  if (inWord) words.push(cur);
  return words;
}
