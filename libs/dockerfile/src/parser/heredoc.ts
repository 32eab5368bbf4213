import { emptyEnv } from '../shell/env.js';
import { ShellLex } from '../shell/lex.js';
import { ShellExpansionError } from '../shell/shell-error.js';
import type { Heredoc } from './node.js';

/** The instructions whose arguments may start heredocs. */
export const HEREDOC_INSTRUCTIONS: ReadonlySet<string> = new Set(['add', 'copy', 'run']);
/** The instructions that may hold an instruction with heredocs (`ONBUILD RUN <<EOF`). */
export const HEREDOC_COMPOUND_INSTRUCTIONS: ReadonlySet<string> = new Set(['onbuild']);

// Go's \d is ASCII and its \s is [\t\n\f\r ].
const reHeredoc = /^([0-9]*)<<(-?)[\t\n\f\r ]*([^<]*)$/u;

/** The largest file descriptor Go's strconv.ParseUint saturates to (2^64-1, as a double). */
const MAX_FD = 2 ** 64;

function parseFd(digits: string): number {
  // strconv.ParseUint: empty is an error (0); an overflow saturates.
  if (digits === '') return 0;
  const n = Number(digits);
  return n >= MAX_FD ? MAX_FD : n;
}

/**
 * Parses one word as a heredoc start (`<<EOF`, `<<-EOF`, `3<<'EOF'`, `<< EOF`), or returns
 * undefined when it is not one. A word quoted in any part means the body is not expanded: the word
 * is lexed with and without raw quotes and the quote counts compared, as BuildKit does.
 * Throws ShellExpansionError for a malformed word (`<<'EOF`).
 */
export function parseHeredoc(src: string): Heredoc | undefined {
  const m = reHeredoc.exec(src);
  if (!m) return undefined;
  const rest = m[3] ?? '';
  if (rest.length === 0) return undefined;

  const shlex = new ShellLex('\\', { skipUnsetEnv: true });
  const words = shlex.processWords(rest, emptyEnv);
  if (words.length !== 1) return undefined;
  shlex.rawQuotes = true;
  const wordsRaw = shlex.processWords(rest, emptyEnv);
  if (wordsRaw.length !== words.length) {
    throw new ShellExpansionError(
      `internal lexing of heredoc produced inconsistent results: ${rest}`,
    );
  }
  const word = words[0] ?? '';
  const wordRaw = wordsRaw[0] ?? '';
  const quotes = (s: string): number => s.split("'").length + s.split('"').length - 2;
  return {
    name: word,
    fileDescriptor: parseFd(m[1] ?? ''),
    expand: quotes(word) === quotes(wordRaw),
    chomp: m[2] === '-',
    content: '',
  };
}

/** The heredocs a logical line starts, in order. Lexing failures mean none. */
export function heredocsFromLine(line: string): Heredoc[] {
  const shlex = new ShellLex('\\', { rawQuotes: true, rawEscapes: true, skipUnsetEnv: true });
  let words: string[];
  try {
    words = shlex.processWords(line, emptyEnv);
  } catch (err) {
    // BuildKit ignores the lexer's error here: a line it cannot lex has no heredocs.
    if (!(err instanceof ShellExpansionError)) throw err;
    words = [];
  }
  const docs: Heredoc[] = [];
  for (const word of words) {
    const doc = parseHeredoc(word);
    if (doc) docs.push(doc);
  }
  return docs;
}

/** Strips the leading tabs of every line of a `<<-` heredoc body. */
export function chompHeredocContent(src: string): string {
  // Go's (?m)^ follows \n only; JavaScript's m flag would also match after \r.
  return src.replace(/(?<=^|\n)\t+/g, '');
}
