import { goJsonParse } from '../go/json.js';
import { trimLeftSpace } from '../go/unicode.js';

/** The parser directives BuildKit knows; any other `# key=value` ends the directive block. */
export const VALID_DIRECTIVES: ReadonlySet<string> = new Set(['syntax', 'escape', 'check']);

/** A parser directive (`# syntax=...`, `# escape=...`, `# check=...`). */
export interface Directive {
  /** Lower-cased name. */
  name: string;
  value: string;
  /** 1-based line. */
  line: number;
}

// Go's \s is [\t\n\f\r ] and its `.` matches anything but \n.
const reDirective = /^([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*([^\n]+?)[\t\n\f\r ]*$/u;

/** Thrown for a repeated directive; the parser turns it into a DockerfileError. */
export class DirectiveError extends Error {}

/**
 * BuildKit's `DirectiveParser`: directives are only recognised at the very top of the file, before
 * any instruction, blank-free comment or other line; each may appear once.
 */
export class DirectiveParser {
  private done = false;
  private readonly seen = new Set<string>();

  /**
   * @param comment the comment prefix (`#`, or `//` when detecting the syntax of other formats)
   * @param line the number of lines before the first line fed (1 after a shebang)
   */
  constructor(
    private readonly comment = '#',
    private line = 0,
  ) {}

  /** True once the directive block has ended. */
  get finished(): boolean {
    return this.done;
  }

  /** Feeds one line (newline and leading whitespace already trimmed by the caller as needed). */
  parseLine(text: string): Directive | undefined {
    this.line++;
    if (this.done) return undefined;
    if (!text.startsWith(this.comment)) {
      this.done = true;
      return undefined;
    }
    const rest = trimLeftSpace(text.slice(this.comment.length));
    const m = reDirective.exec(rest);
    if (!m) {
      this.done = true;
      return undefined;
    }
    const name = (m[1] ?? '').toLowerCase();
    if (!VALID_DIRECTIVES.has(name)) {
      this.done = true;
      return undefined;
    }
    if (this.seen.has(name))
      throw new DirectiveError(`only one ${name} parser directive can be used`);
    this.seen.add(name);
    return { name, value: m[2] ?? '', line: this.line };
  }
}

/** A directive found by {@link detectSyntax} or {@link parseDirective}. */
export interface DetectedDirective {
  /** The value up to its first space (for `syntax`, the frontend image). */
  value: string;
  /** The whole value. */
  cmdline: string;
  /** The line, 1-based (0 for the JSON form). */
  line: number;
}

/** bufio.ScanLines: lines without `\n` and one trailing `\r`. */
function scanLines(text: string): string[] {
  if (text === '') return [];
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  return lines.map((l) => (l.endsWith('\r') ? l.slice(0, -1) : l));
}

function detectFromParser(
  key: string,
  text: string,
  parser: DirectiveParser,
): DetectedDirective | undefined {
  for (const line of scanLines(text)) {
    if (parser.finished) break;
    let d: Directive | undefined;
    try {
      d = parser.parseLine(line);
    } catch (err) {
      // BuildKit keeps the directives read before a repeated one.
      if (err instanceof DirectiveError) break;
      throw err;
    }
    if (d?.name === key) {
      const sp = d.value.indexOf(' ');
      return { value: sp < 0 ? d.value : d.value.slice(0, sp), cmdline: d.value, line: d.line };
    }
  }
  return undefined;
}

function detect(key: string, input: string, anyFormat: boolean): DetectedDirective | undefined {
  let text = input.startsWith('\ufeff') ? input.slice(1) : input;
  let line = 0;
  const nl = text.indexOf('\n');
  const first = nl < 0 ? text : text.slice(0, nl);
  if (first.startsWith('#!')) {
    // A shebang line is skipped (bytes.Cut: no newline leaves nothing).
    text = nl < 0 ? '' : text.slice(nl + 1);
    line = 1;
  }
  const found = detectFromParser(key, text, new DirectiveParser('#', line));
  if (found !== undefined || !anyFormat) return found;

  const slashes = detectFromParser(key, text, new DirectiveParser('//', line));
  if (slashes !== undefined) return slashes;

  // A JSON document: { "syntax": "..." }.
  const decoded = goJsonParse(text);
  if (!decoded.ok) return undefined;
  const doc = decoded.value;
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) return undefined;
  const v = (doc as Record<string, unknown>)[key];
  return typeof v === 'string' ? { value: v, cmdline: v, line } : undefined;
}

/**
 * BuildKit's `DetectSyntax`: the `syntax` directive as `# syntax=...`, or `// syntax=...`, or a
 * JSON document's `syntax` key; a leading shebang line is skipped.
 */
export function detectSyntax(text: string): DetectedDirective | undefined {
  return detect('syntax', text, true);
}

/** BuildKit's `ParseDirective`: a `# key=value` directive at the top of the file. */
export function parseDirective(key: string, text: string): DetectedDirective | undefined {
  return detect(key, text, false);
}
