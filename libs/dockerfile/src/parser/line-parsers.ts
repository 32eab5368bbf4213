/**
 * BuildKit's line parsers (`line_parsers.go`): each turns the arguments of one instruction into the
 * linked list of argument nodes, per the instruction's syntax.
 */
import { goJsonParse } from '../go/json.js';
import { goQuote } from '../go/quote.js';
import { goSplit } from '../go/regexp.js';
import { isSpace, trimLeftSpace } from '../go/unicode.js';
import { decodeUtf8, encodeUtf8, toValidUtf8 } from '../go/utf8.js';
import { Node } from './node.js';
import { reWhitespace } from './split-command.js';

/** A line parser failure; the parser turns it into a DockerfileError with the lines. */
export class LineParseError extends Error {}

const errNotStringArray = 'when using JSON array syntax, arrays must be comprised of strings only';

/** What a line parser returns: the first argument node and the attributes. */
export interface LineParseResult {
  next: Node | undefined;
  attrs: Record<string, boolean>;
}

/** Parser state the line parsers read: the escape token, and how to parse a nested instruction. */
export interface LineParseContext {
  escapeToken: string;
  newNodeFromLine(line: string): Node;
}

export type LineParser = (rest: string, ctx: LineParseContext) => LineParseResult;

const none = (): LineParseResult => ({ next: undefined, attrs: {} });

/** Unknown instructions keep their keyword and get one empty argument node. */
export const parseIgnore: LineParser = () => ({ next: new Node(), attrs: {} });

/** ONBUILD: the rest is an instruction of its own. */
export const parseSubCommand: LineParser = (rest, ctx) => {
  if (rest === '') return none();
  const child = ctx.newNodeFromLine(rest);
  return { next: new Node({ children: [child] }), attrs: {} };
};

function codePointAtOr(s: string, i: number): number {
  return s.codePointAt(i) ?? 0;
}

/**
 * Splits on whitespace outside quotes, keeping the quotes and the escape tokens in the words (the
 * instruction layer expands them later).
 */
export function parseWords(rest: string, escapeToken: string): string[] {
  const IN_SPACES = 0;
  const IN_WORD = 1;
  const IN_QUOTE = 2;
  const esc = escapeToken.codePointAt(0) ?? 0x5c;
  const words: string[] = [];
  let phase = IN_SPACES;
  let quote = 0;
  let blankOK = false;
  let ch = 0;
  let chWidth = 0;
  let word = '';
  // Go's WriteRune writes an invalid byte as U+FFFD.
  const rune = (cp: number): string =>
    cp >= 0xd800 && cp <= 0xdfff ? '\ufffd' : String.fromCodePoint(cp);
  const n = rest.length;

  for (let pos = 0; pos <= n; pos += chWidth) {
    if (pos !== n) {
      ch = codePointAtOr(rest, pos);
      chWidth = ch > 0xffff ? 2 : 1;
    }
    if (phase === IN_SPACES) {
      if (pos === n) break;
      if (isSpace(ch)) continue;
      phase = IN_WORD;
    }
    if ((phase === IN_WORD || phase === IN_QUOTE) && pos === n) {
      if (blankOK || word.length > 0) words.push(word);
      break;
    }
    if (phase === IN_WORD) {
      if (isSpace(ch)) {
        phase = IN_SPACES;
        if (blankOK || word.length > 0) words.push(word);
        word = '';
        blankOK = false;
        continue;
      }
      if (ch === 0x27 || ch === 0x22) {
        quote = ch;
        blankOK = true;
        phase = IN_QUOTE;
      }
      if (ch === esc) {
        if (pos + chWidth === n) continue; // skip an escape token at the end of the line
        // Unquoted, an escape token and the next character go in as they are, even a quote.
        word += rune(ch);
        pos += chWidth;
        ch = codePointAtOr(rest, pos);
        chWidth = ch > 0xffff ? 2 : 1;
      }
      word += rune(ch);
      continue;
    }
    // IN_QUOTE
    if (ch === quote) phase = IN_WORD;
    // The escape token escapes in double quotes only.
    if (ch === esc && quote !== 0x27) {
      if (pos + chWidth === n) {
        phase = IN_WORD;
        continue; // skip the escape token at the end
      }
      pos += chWidth;
      word += rune(ch);
      ch = codePointAtOr(rest, pos);
      chWidth = ch > 0xffff ? 2 : 1;
    }
    word += rune(ch);
  }
  return words;
}

function newKeyValueNode(key: string, value: string, sep: string): Node {
  return new Node({ value: key, next: new Node({ value, next: new Node({ value: sep }) }) });
}

/**
 * ENV and LABEL: `key=value ...`, or the legacy `key value` (the rest of the line is the value)
 * when the first word has no `=`. Each pair becomes `key value sep`, sep `=` or `` (legacy).
 */
function parseNameVal(rest: string, key: string, escapeToken: string): Node | undefined {
  const words = parseWords(rest, escapeToken);
  if (words.length === 0) return undefined;

  if (!(words[0] ?? '').includes('=')) {
    const parts = goSplit(reWhitespace, rest, 2);
    if (parts.length < 2) throw new LineParseError(`${key} must have two arguments`);
    return newKeyValueNode(parts[0] ?? '', parts[1] ?? '', '');
  }

  let root: Node | undefined;
  let prev: Node | undefined;
  for (const word of words) {
    const i = word.indexOf('=');
    if (i < 0) {
      throw new LineParseError(
        `Syntax error - can't find = in ${goQuote(word)}. Must be of the form: name=value`,
      );
    }
    const node = newKeyValueNode(word.slice(0, i), word.slice(i + 1), '=');
    if (root === undefined) root = node;
    if (prev !== undefined) prev.next = node;
    prev = node.next?.next;
  }
  return root;
}

export const parseEnv: LineParser = (rest, ctx) => ({
  next: parseNameVal(rest, 'ENV', ctx.escapeToken),
  attrs: {},
});

export const parseLabel: LineParser = (rest, ctx) => ({
  next: parseNameVal(rest, 'LABEL', ctx.escapeToken),
  attrs: {},
});

/** ARG: `name1 name2= name3="" name4=value`, each word one node. */
export const parseNameOrNameVal: LineParser = (rest, ctx) => {
  const words = parseWords(rest, ctx.escapeToken);
  let root: Node | undefined;
  let prev: Node | undefined;
  for (const word of words) {
    const node = new Node({ value: word });
    if (prev === undefined) root = node;
    else prev.next = node;
    prev = node;
  }
  return { next: root, attrs: {} };
};

/** FROM, EXPOSE and the shell forms of COPY, ADD and VOLUME: whitespace-separated words. */
export const parseStringsWhitespaceDelimited: LineParser = (rest) => {
  if (rest === '') return none();
  let root: Node | undefined;
  let prev: Node | undefined;
  for (const str of goSplit(reWhitespace, rest, -1)) {
    const node = new Node({ value: str });
    if (prev === undefined) root = node;
    else prev.next = node;
    prev = node;
  }
  return { next: root, attrs: {} };
};

/** MAINTAINER, STOPSIGNAL, USER, WORKDIR: the whole rest as one argument. */
export const parseString: LineParser = (rest) => {
  if (rest === '') return none();
  return { next: new Node({ value: rest }), attrs: {} };
};

class NotJsonArray extends Error {}

/** The JSON form: a JSON array of strings, each one node; attribute `json`. */
function parseJSON(input: string): LineParseResult {
  const rest = trimLeftSpace(input);
  if (!rest.startsWith('[')) throw new NotJsonArray('not a JSON array');
  const decoded = goJsonParse(rest);
  if (!decoded.ok) throw new NotJsonArray(decoded.error);
  const parsed = decoded.value;
  if (!Array.isArray(parsed)) throw new NotJsonArray('not a JSON array');
  let top: Node | undefined;
  let prev: Node | undefined;
  for (const item of parsed as unknown[]) {
    if (typeof item !== 'string') throw new LineParseError(errNotStringArray);
    // Go's decoder turns invalid UTF-8 and lone surrogate escapes into U+FFFD.
    const node = new Node({ value: toValidUtf8(item) });
    if (prev === undefined) top = node;
    else prev.next = node;
    prev = node;
  }
  return { next: top, attrs: { json: true } };
}

/** CMD, ENTRYPOINT, RUN, SHELL: the JSON form if the rest is a JSON array, else one string. */
export const parseMaybeJSON: LineParser = (rest) => {
  if (rest === '') return none();
  try {
    return parseJSON(rest);
  } catch (err) {
    if (!(err instanceof NotJsonArray)) throw err;
  }
  return { next: new Node({ value: rest }), attrs: {} };
};

/** ADD, COPY, VOLUME: the JSON form, else whitespace-separated words. */
export const parseMaybeJSONToList: LineParser = (rest, ctx) => {
  try {
    return parseJSON(rest);
  } catch (err) {
    if (!(err instanceof NotJsonArray)) throw err;
  }
  return parseStringsWhitespaceDelimited(rest, ctx);
};

/** HEALTHCHECK: a type word (`CMD`, `NONE`) then a CMD-like rest. Byte-wise, as BuildKit. */
export const parseHealthConfig: LineParser = (rest, ctx) => {
  const bytes = encodeUtf8(rest);
  let sep = 0;
  while (sep < bytes.length && !isSpace(bytes[sep] ?? 0)) sep++;
  let next = sep;
  while (next < bytes.length && isSpace(bytes[next] ?? 0)) next++;
  if (sep === 0) return none();
  const typ = decodeUtf8(bytes.subarray(0, sep));
  const cmd = parseMaybeJSON(decodeUtf8(bytes.subarray(next)), ctx);
  return { next: new Node({ value: typ, next: cmd.next }), attrs: cmd.attrs };
};
