import { goSplit } from '../go/regexp.js';
import { isSpace, trimSpace } from '../go/unicode.js';
import { decodeUtf8, encodeUtf8 } from '../go/utf8.js';

/** BuildKit's reWhitespace: the separators between arguments. */
export const reWhitespace = /[\t\v\f\r ]+/u;

/** A logical line split into keyword, `--flags` and the remaining arguments. */
export interface SplitCommand {
  cmd: string;
  flags: string[];
  args: string;
}

/** BuildKit's `splitCommand`: the keyword (as written), its flags and the trimmed rest. */
export function splitCommand(line: string, escapeToken: string): SplitCommand {
  let args = '';
  let flags: string[] = [];
  const cmdline = goSplit(reWhitespace, trimSpace(line), 2);
  if (cmdline.length === 2) {
    [args, flags] = extractBuilderFlags(cmdline[1] ?? '', escapeToken);
  }
  return { cmd: cmdline[0] ?? '', flags, args: trimSpace(args) };
}

/**
 * BuildKit's `extractBuilderFlags`: reads leading `--name[=value]` words (quotes and the escape
 * token allowed inside) up to the first other word or a bare `--`. Like BuildKit it works byte by
 * byte, so a flag's non-ASCII bytes come out as Latin-1 characters.
 */
export function extractBuilderFlags(text: string, escapeToken: string): [string, string[]] {
  const line = encodeUtf8(text);
  const esc = escapeToken.charCodeAt(0);
  const rest = (pos: number): string => decodeUtf8(line.subarray(pos));
  const IN_SPACES = 0;
  const IN_WORD = 1;
  const IN_QUOTE = 2;

  const words: string[] = [];
  let phase = IN_SPACES;
  let word = '';
  let quote = 0;
  let blankOK = false;
  let ch = 0;
  const n = line.length;

  for (let pos = 0; pos <= n; pos++) {
    if (pos !== n) ch = line[pos] ?? 0;

    if (phase === IN_SPACES) {
      if (pos === n) break;
      if (isSpace(ch)) continue;
      // Only keep going if the next word starts with --
      if (ch !== 0x2d || pos + 1 === n || line[pos + 1] !== 0x2d) return [rest(pos), words];
      phase = IN_WORD;
    }
    if ((phase === IN_WORD || phase === IN_QUOTE) && pos === n) {
      if (word !== '--' && (blankOK || word.length > 0)) words.push(word);
      break;
    }
    if (phase === IN_WORD) {
      if (isSpace(ch)) {
        phase = IN_SPACES;
        if (word === '--') return [rest(pos), words];
        if (blankOK || word.length > 0) words.push(word);
        word = '';
        blankOK = false;
        continue;
      }
      if (ch === 0x27 || ch === 0x22) {
        quote = ch;
        blankOK = true;
        phase = IN_QUOTE;
        continue;
      }
      if (ch === esc) {
        if (pos + 1 === n) continue; // just skip an escape at the end
        pos++;
        ch = line[pos] ?? 0;
      }
      word += String.fromCharCode(ch);
      continue;
    }
    // IN_QUOTE
    if (ch === quote) {
      phase = IN_WORD;
      continue;
    }
    if (ch === esc) {
      if (pos + 1 === n) {
        phase = IN_WORD;
        continue; // just skip an escape at the end
      }
      pos++;
      ch = line[pos] ?? 0;
    }
    word += String.fromCharCode(ch);
  }
  return ['', words];
}
