/**
 * The Dockerfile parser, a port of BuildKit's `frontend/dockerfile/parser`: it turns the text into
 * BuildKit's low-level tree (instructions with their raw arguments, flags, heredocs and lines)
 * without expanding anything. Instruction semantics live in the next stage.
 */
import { DockerfileError } from '../dockerfile-error.js';
import { DockerfileLimitError } from '../limits.js';
import { toLower, trimLeftSpace, trimSpace } from '../go/unicode.js';
import { decodeUtf8, encodeUtf8, utf8Length } from '../go/utf8.js';
import { ShellExpansionError } from '../shell/shell-error.js';
import { DirectiveError, DirectiveParser } from './directives.js';
import type { Directive } from './directives.js';
import {
  HEREDOC_COMPOUND_INSTRUCTIONS,
  HEREDOC_INSTRUCTIONS,
  heredocsFromLine,
} from './heredoc.js';
import {
  LineParseError,
  parseEnv,
  parseHealthConfig,
  parseIgnore,
  parseLabel,
  parseMaybeJSON,
  parseMaybeJSONToList,
  parseNameOrNameVal,
  parseString,
  parseStringsWhitespaceDelimited,
  parseSubCommand,
} from './line-parsers.js';
import type { LineParseContext, LineParser } from './line-parsers.js';
import { Node } from './node.js';
import { splitCommand } from './split-command.js';

/** The default escape token. */
export const DEFAULT_ESCAPE_TOKEN = '\\';

/** BuildKit's longest line: Go's bufio.MaxScanTokenSize - 1 bytes. */
export const MAX_LINE_BYTES = 64 * 1024 - 1;

/** A non-fatal finding, e.g. an empty line inside a continuation. */
export interface ParseWarning {
  short: string;
  detail: string[];
  url: string;
  location: { start: number; end: number };
}

/** What `parse` returns. */
export interface ParseResult {
  /** The root node; its children are the instructions. */
  ast: Node;
  /** The escape token in effect (`\` or `` ` ``). */
  escapeToken: string;
  warnings: ParseWarning[];
  /** The parser directives found at the top of the file. */
  directives: Directive[];
}

/** The dispatch table: which line parser reads each instruction's arguments. */
const DISPATCH: ReadonlyMap<string, LineParser> = new Map<string, LineParser>([
  ['add', parseMaybeJSONToList],
  ['arg', parseNameOrNameVal],
  ['cmd', parseMaybeJSON],
  ['copy', parseMaybeJSONToList],
  ['entrypoint', parseMaybeJSON],
  ['env', parseEnv],
  ['expose', parseStringsWhitespaceDelimited],
  ['from', parseStringsWhitespaceDelimited],
  ['healthcheck', parseHealthConfig],
  ['label', parseLabel],
  ['maintainer', parseString],
  ['onbuild', parseSubCommand],
  ['run', parseMaybeJSON],
  ['shell', parseMaybeJSON],
  ['stopsignal', parseString],
  ['user', parseString],
  ['volume', parseMaybeJSONToList],
  ['workdir', parseString],
]);

/** The directive state of one parse: escape token, continuation regexp, directives seen. */
class ParseDirectives implements LineParseContext {
  escapeToken = DEFAULT_ESCAPE_TOKEN;
  lineContinuation = /([^\\])\\[ \t]*$|^\\[ \t]*$/u;
  readonly parser = new DirectiveParser();
  readonly found: Directive[] = [];

  setEscapeToken(s: string): void {
    if (s !== '`' && s !== '\\') {
      throw new DirectiveError(`invalid escape token '${s}' does not match \` or \\`);
    }
    this.escapeToken = s;
    // The token continues a line when it is the last non-blank character, unless it is itself
    // escaped (a token on its own line has nothing before it: second branch).
    const e = s === '\\' ? '\\\\' : '`';
    this.lineContinuation = new RegExp(`([^${e}])${e}[ \\t]*$|^${e}[ \\t]*$`, 'u');
  }

  /** Feeds a line to the directive parser; true when it was a directive. */
  possibleParserDirective(line: string): boolean {
    const directive = this.parser.parseLine(line);
    if (directive === undefined) return false;
    this.found.push(directive);
    if (directive.name === 'escape') this.setEscapeToken(directive.value);
    return true;
  }

  newNodeFromLine(line: string): Node {
    return newNodeFromLine(line, this, []);
  }
}

/** Splits the text into lines that keep their `\n`, stopping at a line too long for BuildKit. */
class LineScanner {
  private pos = 0;
  /** Set when a line exceeded MAX_LINE_BYTES; scanning stops there. */
  err: string | undefined;

  constructor(private readonly text: string) {}

  scan(): string | undefined {
    if (this.err !== undefined || this.pos >= this.text.length) return undefined;
    const i = this.text.indexOf('\n', this.pos);
    const end = i < 0 ? this.text.length : i + 1;
    const line = this.text.slice(this.pos, end);
    if (utf8Length(i < 0 ? line : line.slice(0, -1)) > MAX_LINE_BYTES) {
      this.err = `dockerfile line greater than max allowed size of ${MAX_LINE_BYTES}`;
      return undefined;
    }
    this.pos = end;
    return line;
  }
}

function trimNewline(s: string): string {
  let end = s.length;
  while (end > 0 && (s[end - 1] === '\n' || s[end - 1] === '\r')) end--;
  return s.slice(0, end);
}

function isComment(line: string): boolean {
  return trimLeftSpace(line).startsWith('#');
}

function isEmptyContinuationLine(line: string): boolean {
  return trimLeftSpace(trimNewline(line)).length === 0;
}

function trimContinuationCharacter(line: string, d: ParseDirectives): [string, boolean] {
  if (d.lineContinuation.test(line)) return [line.replace(d.lineContinuation, '$1'), false];
  return [line, true];
}

/** Trims the newline (and leading blanks), looks for a directive, drops a comment line's text. */
function processLine(
  d: ParseDirectives,
  token: string,
  stripLeftWhitespace: boolean,
): [string, boolean] {
  let t = trimNewline(token);
  if (stripLeftWhitespace) t = trimLeftSpace(t);
  const directiveOk = d.possibleParserDirective(t);
  return [isComment(t) ? '' : t, directiveOk];
}

/** Go's `string(bytes[1:])`: drops the first byte, which may split a multi-byte character. */
function dropFirstByte(s: string): string {
  const cp = s.codePointAt(0) ?? 0;
  if (cp < 0x80) return s.slice(1);
  return decodeUtf8(encodeUtf8(s).subarray(1));
}

function newNodeFromLine(line: string, d: ParseDirectives, comments: string[]): Node {
  const { cmd, flags, args } = splitCommand(line, d.escapeToken);
  const fn = DISPATCH.get(toLower(cmd)) ?? parseIgnore;
  const { next, attrs } = fn(args, d);
  const node = new Node({ value: cmd, next, attributes: attrs });
  node.original = line;
  node.flags = flags;
  node.prevComment = comments;
  return node;
}

function canContainHeredoc(node: Node): boolean {
  let n = node;
  const inner = n.next?.children[0];
  if (HEREDOC_COMPOUND_INSTRUCTIONS.has(toLower(n.value)) && inner !== undefined) n = inner;
  if (!HEREDOC_INSTRUCTIONS.has(toLower(n.value))) return false;
  return n.attributes.json !== true;
}

/** Wraps a failure with BuildKit's location (`withLocation`): an end before the start is the start. */
function withLocation(err: unknown, start: number, end: number): DockerfileError {
  if (err instanceof DockerfileLimitError) return err.at({ startLine: start, endLine: end });
  if (err instanceof DockerfileError) return err;
  if (
    err instanceof DirectiveError ||
    err instanceof LineParseError ||
    err instanceof ShellExpansionError ||
    typeof err === 'string'
  ) {
    const message = typeof err === 'string' ? err : err.message;
    return new DockerfileError(message, { startLine: start, endLine: end, cause: err });
  }
  // Anything else is a bug in the port; keep it visible as the cause of a typed error.
  const message = err instanceof Error ? err.message : String(err);
  return new DockerfileError(`internal parser error: ${message}`, {
    startLine: start,
    endLine: end,
    cause: err,
  });
}

/**
 * Parses a Dockerfile (text, or bytes read as UTF-8 with invalid bytes kept) into BuildKit's tree.
 * Throws DockerfileError for what BuildKit rejects: a repeated or invalid directive, a malformed
 * instruction (`ENV` without a value, a JSON array of non-strings), an unterminated heredoc, a line
 * over 64 KiB, or a file with no instruction.
 *
 * Line numbers are 1-based and follow BuildKit exactly, including its quirk of reporting a
 * directive error one line early.
 */
export function parse(input: string | Uint8Array): ParseResult {
  const text = typeof input === 'string' ? input : decodeUtf8(input);
  const d = new ParseDirectives();
  const scanner = new LineScanner(text);
  const root = new Node();
  root.startLine = -1;
  const warnings: ParseWarning[] = [];
  let comments: string[] = [];
  let currentLine = 0;

  for (let raw = scanner.scan(); raw !== undefined; raw = scanner.scan()) {
    let bytesRead = raw;
    if (currentLine === 0 && bytesRead.startsWith('\ufeff')) bytesRead = bytesRead.slice(1);
    if (isComment(bytesRead)) {
      const comment = trimSpace(dropFirstByte(bytesRead));
      if (comment === '') comments = [];
      else comments.push(comment);
    }
    let directiveOk: boolean;
    try {
      [bytesRead, directiveOk] = processLine(d, bytesRead, true);
    } catch (err) {
      throw withLocation(err, currentLine, 0);
    }
    // A directive is not a comment of the first instruction.
    if (directiveOk) comments = comments.slice(0, -1);
    currentLine++;

    const startLine = currentLine;
    let isEndOfLine: boolean;
    [bytesRead, isEndOfLine] = trimContinuationCharacter(bytesRead, d);
    if (isEndOfLine && bytesRead.length === 0) continue;
    let line = bytesRead;

    let hasEmptyContinuationLine = false;
    while (!isEndOfLine) {
      const next = scanner.scan();
      if (next === undefined) break;
      let cont: string;
      try {
        [cont] = processLine(d, next, false);
      } catch (err) {
        throw withLocation(err, currentLine, 0);
      }
      currentLine++;
      // A comment inside a continuation is skipped; an empty line is skipped with a warning.
      if (isComment(next)) continue;
      if (isEmptyContinuationLine(cont)) {
        hasEmptyContinuationLine = true;
        continue;
      }
      [cont, isEndOfLine] = trimContinuationCharacter(cont, d);
      line += cont;
    }

    if (hasEmptyContinuationLine) {
      warnings.push({
        short: 'Empty continuation line found in: ' + line,
        detail: ['Empty continuation lines will become errors in a future release'],
        url: 'https://docs.docker.com/go/dockerfile/rule/no-empty-continuation/',
        location: { start: currentLine, end: currentLine },
      });
    }

    let child: Node;
    try {
      child = newNodeFromLine(line, d, comments);
    } catch (err) {
      throw withLocation(err, startLine, currentLine);
    }

    if (canContainHeredoc(child) && line.includes('<<')) {
      let heredocs;
      try {
        heredocs = heredocsFromLine(line);
      } catch (err) {
        throw withLocation(err, startLine, currentLine);
      }
      for (const heredoc of heredocs) {
        let terminated = false;
        for (let body = scanner.scan(); body !== undefined; body = scanner.scan()) {
          currentLine++;
          let possibleTerminator = trimNewline(body);
          if (heredoc.chomp) possibleTerminator = possibleTerminator.replace(/^\t+/, '');
          if (possibleTerminator === heredoc.name) {
            terminated = true;
            break;
          }
          heredoc.content += body;
        }
        if (!terminated) throw withLocation('unterminated heredoc', startLine, currentLine);
        child.heredocs.push(heredoc);
      }
    }

    root.addChild(child, startLine, currentLine);
    comments = [];
  }

  if (root.startLine < 0) throw withLocation('file with no instructions', currentLine, 0);
  if (scanner.err !== undefined) throw withLocation(scanner.err, currentLine, 0);
  return { ast: root, escapeToken: d.escapeToken, warnings, directives: d.found };
}

/** Parses a Dockerfile and prints BuildKit's AST dump (`Node.Dump()`), one line per instruction. */
export function dumpAst(input: string | Uint8Array): string {
  return parse(input).ast.dump();
}

/**
 * BuildKit's `PrintWarnings`: one `[WARNING]: ...` line per warning, then the deprecation notice;
 * empty when there is nothing to report.
 */
export function formatWarnings(warnings: readonly ParseWarning[]): string {
  if (warnings.length === 0) return '';
  let out = '';
  for (const w of warnings) out += `[WARNING]: ${w.short}\n`;
  return out + '[WARNING]: Empty continuation lines will become errors in a future release.\n';
}
