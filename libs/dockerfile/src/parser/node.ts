import { goQuote, goQuoteSlice } from '../go/quote.js';
import { toLower, trimSpace } from '../go/unicode.js';

/** A heredoc attached to an instruction (`RUN <<EOF`), its body read verbatim. */
export interface Heredoc {
  /** The terminating word, quotes removed. */
  name: string;
  /** The file descriptor before `<<` (`3<<EOF`), 0 when absent. */
  fileDescriptor: number;
  /** False when any part of the word was quoted (`<<'EOF'`): the body is not expanded. */
  expand: boolean;
  /** `<<-`: leading tabs are stripped from the body (by the consumer, see chompHeredocContent). */
  chomp: boolean;
  /** The body, line endings included, never chomped. */
  content: string;
}

/**
 * A node of BuildKit's parse tree. The root's children are the instructions; an instruction's
 * `value` is its keyword as written and its arguments hang off `next` as a linked list. ONBUILD's
 * `next` has the nested instruction as its only child.
 */
export class Node {
  /** The token: a keyword on an instruction, an argument otherwise. */
  value = '';
  /** The next argument. */
  next: Node | undefined = undefined;
  /** The instructions (root) or the nested instruction (ONBUILD's argument node). */
  children: Node[] = [];
  /** Heredocs of this instruction, in the order they appear. */
  heredocs: Heredoc[] = [];
  /** Attributes set by the line parsers; `json` marks the JSON (exec) form. */
  attributes: Record<string, boolean> = {};
  /** The logical line as read, continuations joined. */
  original = '';
  /** The `--flag[=value]` words before the arguments (instructions only). */
  flags: string[] = [];
  /** First line of the instruction, 1-based. */
  startLine = 0;
  /** Last line of the instruction, heredoc bodies included. */
  endLine = 0;
  /** The comment lines just before the instruction. */
  prevComment: string[] = [];

  constructor(init: Partial<Pick<Node, 'value' | 'next' | 'children' | 'attributes'>> = {}) {
    Object.assign(this, init);
  }

  /** The lines this node covers, one range per line as BuildKit's `Location()`. */
  location(): { start: number; end: number }[] {
    const end = this.endLine <= this.startLine ? this.startLine : this.endLine;
    const out: { start: number; end: number }[] = [];
    for (let i = this.startLine; i <= end; i++) out.push({ start: i, end: i });
    return out;
  }

  /** Adds an instruction, updating this node's line range. */
  addChild(child: Node, startLine: number, endLine: number): void {
    child.startLine = startLine;
    child.endLine = endLine;
    if (this.startLine < 0) this.startLine = startLine;
    this.endLine = endLine;
    this.children.push(child);
  }

  /**
   * BuildKit's `Node.Dump()`: the tree as s-expressions, one `(instr ["flags"...] "arg" ...)`
   * line per instruction, strings quoted as Go's `strconv.Quote`.
   */
  dump(): string {
    let str = toLower(this.value);
    if (this.flags.length > 0) str += ' ' + goQuoteSlice(this.flags);
    for (const n of this.children) str += '(' + n.dump() + ')\n';
    for (let n = this.next; n !== undefined; n = n.next) {
      str += ' ' + (n.children.length > 0 ? n.dump() : goQuote(n.value));
    }
    return trimSpace(str);
  }
}
