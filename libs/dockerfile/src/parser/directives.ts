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
  private line = 0;
  private done = false;
  private readonly seen = new Set<string>();

  constructor(private readonly comment = '#') {}

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
    if (this.seen.has(name)) throw new DirectiveError(`only one ${name} parser directive can be used`);
    this.seen.add(name);
    return { name, value: m[2] ?? '', line: this.line };
  }
}
