/**
 * Shell-like word splitting and variable expansion, a port of BuildKit's
 * `frontend/dockerfile/shell/lex.go`. It mimics the parts of sh a Dockerfile needs: single and
 * double quotes, the escape token, `$v`, `${v}` and the modifiers `:- - :+ + :? ? # ## % %% / //`.
 * Splitting into words happens after expansion: an expanded value splits on whitespace, a quoted
 * string never does.
 */
import { goQuote } from '../go/quote.js';
import { goReplaceAll } from '../go/regexp.js';
import { isDigit, isLetter, isSpace } from '../go/unicode.js';
import { toEnvGetter } from './env.js';
import type { EnvGetter, EnvLike } from './env.js';
import { convertShellPatternToRegex, trimPrefix, trimSuffix } from './pattern.js';
import { ShellExpansionError } from './shell-error.js';
import { DEFAULT_FRONTEND_LIMITS, wordTooLong } from '../limits.js';
import type { ExpansionBudget } from '../limits.js';

const EOF = -1;
const CH_DOLLAR = 0x24;
const CH_SQUOTE = 0x27;
const CH_DQUOTE = 0x22;
const CH_LT = 0x3c;
const CH_LBRACE = 0x7b;
const CH_RBRACE = 0x7d;
const CH_COLON = 0x3a;
const CH_SLASH = 0x2f;

/** Options of a lexer; all default to false. */
export interface ShellLexOptions {
  /** Keep the quote characters in the result. */
  rawQuotes?: boolean;
  /** Keep the escape tokens in the result. */
  rawEscapes?: boolean;
  /** Treat quotes as ordinary characters (heredoc bodies). */
  skipProcessQuotes?: boolean;
  /** Leave references to unset variables as written (`$X`, `${X:-y}`). */
  skipUnsetEnv?: boolean;
  /**
   * The conversion's bounds: the length of one word and of all words together, and its time.
   * Without one, a word is still bounded by the default maxWordLength.
   */
  budget?: ExpansionBudget;
}

/** Everything one expansion yields. */
export interface ProcessWordResult {
  /** The expanded word, spaces between words kept. */
  result: string;
  /** The expanded word split into words (quotes respected). */
  words: string[];
  /** Variables referenced and found. */
  matched: Set<string>;
  /** Variables referenced and not set. */
  unmatched: Set<string>;
}

/** An internal failure; `process` wraps it as BuildKit does (`failed to process "...": ...`). */
class LexError extends Error {}

function runeString(cp: number): string {
  // Go's string(rune) of EOF (-1) or of an invalid rune is U+FFFD.
  return cp < 0 || (cp >= 0xd800 && cp <= 0xdfff) ? '\ufffd' : String.fromCodePoint(cp);
}

/** Go's `text/scanner` as the lexer uses it: Peek and Next over runes, a leading BOM skipped. */
class Scanner {
  private pos = 0;

  constructor(private readonly src: string) {
    if (src.codePointAt(0) === 0xfeff) this.pos = 1;
  }

  peek(): number {
    if (this.pos >= this.src.length) return EOF;
    const cp = this.src.codePointAt(this.pos) ?? EOF;
    // Invalid UTF-8 (an escaped byte) or a lone surrogate reads as RuneError.
    return cp >= 0xd800 && cp <= 0xdfff ? 0xfffd : cp;
  }

  next(): number {
    const cp = this.peek();
    if (cp !== EOF) this.pos += cp > 0xffff ? 2 : 1;
    return cp;
  }
}

/** Accumulates words: an unquoted space ends a word, quoted text never does. */
class Words {
  private word = '';
  private readonly words: string[] = [];
  private inWord = false;

  addChar(cp: number): void {
    if (isSpace(cp) && this.inWord) {
      if (this.word.length !== 0) {
        this.words.push(this.word);
        this.word = '';
        this.inWord = false;
      }
    } else if (!isSpace(cp)) {
      this.addRawChar(cp);
    }
  }

  addRawChar(cp: number): void {
    this.word += runeString(cp);
    this.inWord = true;
  }

  addString(s: string): void {
    for (const ch of s) this.addChar(ch.codePointAt(0) ?? 0);
  }

  addRawString(s: string): void {
    this.word += s;
    this.inWord = true;
  }

  getWords(): string[] {
    if (this.word.length > 0) {
      this.words.push(this.word);
      this.word = '';
      this.inWord = false;
    }
    return this.words;
  }
}

function isSpecialParam(cp: number): boolean {
  // @ * # ? - $ ! 0
  return (
    cp === 0x40 ||
    cp === 0x2a ||
    cp === 0x23 ||
    cp === 0x3f ||
    cp === 0x2d ||
    cp === 0x24 ||
    cp === 0x21 ||
    cp === 0x30
  );
}

/** Whitespace that may separate `<<` from a heredoc word. */
function isHeredocSpace(cp: number): boolean {
  return cp === 0x20 || cp === 0x09 || cp === 0x0d;
}

/** The state of one expansion. */
class ShellWord {
  private readonly scanner: Scanner;
  readonly matches = new Set<string>();
  readonly nonmatches = new Set<string>();
  private rawEscapes: boolean;
  private readonly maxWord: number;

  constructor(
    private readonly lex: ShellLex,
    private readonly env: EnvGetter,
    word: string,
  ) {
    this.scanner = new Scanner(word);
    this.rawEscapes = lex.rawEscapes;
    this.maxWord = lex.budget?.maxWordLength ?? DEFAULT_FRONTEND_LIMITS.maxWordLength;
  }

  /** `s`, unless it is longer than one word may be (an expansion bomb stops here). */
  private bounded(s: string): string {
    if (s.length > this.maxWord) throw wordTooLong(this.maxWord);
    return s;
  }

  process(): [string, string[]] {
    return this.processStopOn(EOF, this.rawEscapes);
  }

  private processStopOn(stopChar: number, rawEscapes: boolean): [string, string[]] {
    const saved = this.rawEscapes;
    this.rawEscapes = rawEscapes;
    try {
      return this.processStopOnInner(stopChar);
    } finally {
      this.rawEscapes = saved;
    }
  }

  private special(cp: number): (() => string) | undefined {
    if (cp === CH_DOLLAR) return () => this.processDollar();
    if (cp === CH_LT) return () => this.processPossibleHeredoc();
    if (!this.lex.skipProcessQuotes) {
      if (cp === CH_SQUOTE) return () => this.processSingleQuote();
      if (cp === CH_DQUOTE) return () => this.processDoubleQuote();
    }
    return undefined;
  }

  private processStopOnInner(stopChar: number): [string, string[]] {
    let result = '';
    const words = new Words();
    const esc = this.lex.escapeCodePoint;
    while (this.scanner.peek() !== EOF) {
      let ch = this.scanner.peek();
      if (stopChar !== EOF && ch === stopChar) {
        this.scanner.next();
        return [result, words.getWords()];
      }
      const fn = this.special(ch);
      if (fn) {
        const tmp = fn();
        result = this.bounded(result + tmp);
        if (ch === CH_DOLLAR) words.addString(tmp);
        else words.addRawString(tmp);
        continue;
      }
      ch = this.scanner.next();
      if (ch === esc) {
        if (this.rawEscapes) {
          words.addRawChar(ch);
          result += runeString(ch);
        }
        // The escape token escapes the next character, except at the end.
        ch = this.scanner.next();
        if (ch === EOF) break;
        words.addRawChar(ch);
      } else {
        words.addChar(ch);
      }
      result += runeString(ch);
    }
    if (stopChar !== EOF) {
      throw new LexError(
        `unexpected end of statement while looking for matching ${runeString(stopChar)}`,
      );
    }
    return [result, words.getWords()];
  }

  private processSingleQuote(): string {
    // Everything up to the next single quote is literal; a single quote cannot be escaped.
    let result = '';
    let ch = this.scanner.next();
    if (this.lex.rawQuotes) result += runeString(ch);
    for (;;) {
      ch = this.scanner.next();
      if (ch === EOF)
        throw new LexError('unexpected end of statement while looking for matching single-quote');
      if (ch === CH_SQUOTE) {
        if (this.lex.rawQuotes) result += runeString(ch);
        return result;
      }
      result += runeString(ch);
    }
  }

  private processDoubleQuote(): string {
    // Literal up to the next double quote, except `$`; the escape token escapes only
    // `"`, `$` and itself, any other escape stays as written.
    let result = '';
    const first = this.scanner.next();
    if (this.lex.rawQuotes) result += runeString(first);
    const esc = this.lex.escapeCodePoint;
    for (;;) {
      const peek = this.scanner.peek();
      if (peek === EOF)
        throw new LexError('unexpected end of statement while looking for matching double-quote');
      if (peek === CH_DQUOTE) {
        const ch = this.scanner.next();
        if (this.lex.rawQuotes) result += runeString(ch);
        return result;
      }
      if (peek === CH_DOLLAR) {
        result = this.bounded(result + this.processDollar());
        continue;
      }
      let ch = this.scanner.next();
      if (ch === esc) {
        if (this.rawEscapes) result += runeString(ch);
        const next = this.scanner.peek();
        if (next === EOF) continue; // an escape at the very end is dropped
        if (next === CH_DQUOTE || next === CH_DOLLAR || next === esc) ch = this.scanner.next();
      }
      result += runeString(ch);
    }
  }

  private processPossibleHeredoc(): string {
    this.scanner.next();
    if (this.scanner.peek() !== CH_LT) return '<';
    this.scanner.next();
    // A heredoc may have whitespace between << and its word; keep it in the same word.
    let space = '';
    while (isHeredocSpace(this.scanner.peek())) space += runeString(this.scanner.next());
    return '<<' + space;
  }

  private getEnv(name: string): [string, boolean] {
    const v = this.env.get(name);
    if (v !== undefined) {
      this.matches.add(name);
      return [v, true];
    }
    this.nonmatches.add(name);
    return ['', false];
  }

  private stopOnOrMissing(stopChar: number, rawEscapes: boolean, missing: string): string {
    try {
      return this.processStopOn(stopChar, rawEscapes)[0];
    } catch (err) {
      if (err instanceof LexError && this.scanner.peek() === EOF) throw new LexError(missing);
      throw err;
    }
  }

  private processDollar(): string {
    this.scanner.next();
    const skipUnset = this.lex.skipUnsetEnv;

    // $xxx
    if (this.scanner.peek() !== CH_LBRACE) {
      const name = this.processName();
      if (name === '') return '$';
      const [value, found] = this.getEnv(name);
      if (!found && skipUnset) return '$' + name;
      return value;
    }

    this.scanner.next();
    const first = this.scanner.peek();
    if (first === EOF) throw new LexError("syntax error: missing '}'");
    if (first === CH_LBRACE || first === CH_RBRACE || first === CH_COLON) {
      // ${{xx}, ${:xx}, ${:}, ${}
      throw new LexError('syntax error: bad substitution');
    }
    const name = this.processName();
    let ch = this.scanner.next();
    let chs = runeString(ch);
    let nullIsUnset = false;

    if (ch === CH_RBRACE) {
      const [value, set] = this.getEnv(name);
      if (!set && skipUnset) return `\${${name}}`;
      return value;
    }

    if (ch === CH_SLASH) return this.processReplace(name);

    if (ch === CH_COLON) {
      // ${xx:...}: an empty value counts as unset; whatever follows goes on as a modifier.
      nullIsUnset = true;
      ch = this.scanner.next();
      chs += runeString(ch);
    } else if (!'+-?#%'.includes(runeString(ch))) {
      throw new LexError(`unsupported modifier (${chs}) in substitution`);
    }

    const modifier = runeString(ch);
    const rawEscapes = modifier === '#' || modifier === '%';
    if (nullIsUnset && rawEscapes)
      throw new LexError(`unsupported modifier (${chs}) in substitution`);
    let word = this.stopOnOrMissing(CH_RBRACE, rawEscapes, "syntax error: missing '}'");

    const [value, set] = this.getEnv(name);
    if (skipUnset && !set) return `\${${name}${chs}${word}}`;

    switch (modifier) {
      case '-':
        return !set || (nullIsUnset && value === '') ? word : value;
      case '+':
        return !set || (nullIsUnset && value === '') ? '' : word;
      case '?':
        if (!set)
          throw new LexError(`${name}: ${word !== '' ? word : 'is not allowed to be unset'}`);
        if (nullIsUnset && value === '') {
          throw new LexError(`${name}: ${word !== '' ? word : 'is not allowed to be empty'}`);
        }
        return value;
      case '%':
      case '#': {
        // %/# trim the shortest match, %%/## the longest.
        let greedy = false;
        if (word.startsWith(modifier)) {
          greedy = true;
          word = word.slice(1);
        }
        try {
          return modifier === '%'
            ? trimSuffix(word, value, greedy)
            : trimPrefix(word, value, greedy);
        } catch (err) {
          throw new LexError(err instanceof Error ? err.message : String(err));
        }
      }
      default:
        throw new LexError(`unsupported modifier (${chs}) in substitution`);
    }
  }

  private processReplace(name: string): string {
    const replaceAll = this.scanner.peek() === CH_SLASH;
    if (replaceAll) this.scanner.next();
    const pattern = this.stopOnOrMissing(CH_SLASH, true, "syntax error: missing '/' in ${}");
    const replacement = this.stopOnOrMissing(CH_RBRACE, true, "syntax error: missing '}'");

    const [value, set] = this.getEnv(name);
    if (this.lex.skipUnsetEnv && !set) return `\${${name}/${pattern}/${replacement}}`;

    let re: RegExp;
    try {
      re = convertShellPatternToRegex(pattern, true, false);
    } catch (err) {
      throw new LexError(
        `invalid pattern (${pattern}) in substitution: ${err instanceof Error ? err.message : String(err)}`,
      );
    }
    if (replaceAll) return this.bounded(goReplaceAll(re, value, replacement, this.maxWord));
    const m = re.exec(value);
    if (!m) return value;
    return this.bounded(value.slice(0, m.index) + replacement + value.slice(m.index + m[0].length));
  }

  private processName(): string {
    // A name is letters, digits and _; a leading digit reads digits only ($1, $999);
    // a special parameter ($@, $#, ...) is one character.
    let name = '';
    while (this.scanner.peek() !== EOF) {
      const ch = this.scanner.peek();
      if (name.length === 0 && isDigit(ch)) {
        while (this.scanner.peek() !== EOF && isDigit(this.scanner.peek())) {
          name += runeString(this.scanner.next());
        }
        return name;
      }
      if (name.length === 0 && isSpecialParam(ch)) return runeString(this.scanner.next());
      if (!isLetter(ch) && !isDigit(ch) && ch !== 0x5f) break;
      name += runeString(this.scanner.next());
    }
    return name;
  }
}

/**
 * The Dockerfile shell lexer. Configure it through the public fields (as BuildKit's `Lex`), then
 * call the process methods; each call is independent, so one lexer may serve many words.
 * Failures throw {@link ShellExpansionError}.
 */
export class ShellLex {
  /** The escape token: `\` by default, `` ` `` after `# escape=``. */
  readonly escapeToken: string;
  /** @internal the escape token as a code point. */
  readonly escapeCodePoint: number;
  rawQuotes: boolean;
  rawEscapes: boolean;
  skipProcessQuotes: boolean;
  skipUnsetEnv: boolean;
  /** The conversion's bounds, shared by its lexers (see ShellLexOptions.budget). */
  readonly budget: ExpansionBudget | undefined;

  constructor(escapeToken = '\\', opts: ShellLexOptions = {}) {
    this.escapeToken = escapeToken;
    this.escapeCodePoint = escapeToken.codePointAt(0) ?? 0x5c;
    this.rawQuotes = opts.rawQuotes ?? false;
    this.rawEscapes = opts.rawEscapes ?? false;
    this.skipProcessQuotes = opts.skipProcessQuotes ?? false;
    this.skipUnsetEnv = opts.skipUnsetEnv ?? false;
    this.budget = opts.budget;
  }

  /** Expands the variables in `word`; quotes are removed, spaces kept. */
  processWord(word: string, env: EnvLike): string {
    return this.processWordWithMatches(word, env).result;
  }

  /** Expands `word` and splits it into words (after expansion; quotes keep words together). */
  processWords(word: string, env: EnvLike): string[] {
    return this.processWordWithMatches(word, env).words;
  }

  /** Expands `word` and reports which variables it used and which were not set. */
  processWordWithMatches(word: string, env: EnvLike): ProcessWordResult {
    const sw = new ShellWord(this, toEnvGetter(env), word);
    try {
      const [result, words] = sw.process();
      this.budget?.charge(result.length);
      return { result, words, matched: sw.matches, unmatched: sw.nonmatches };
    } catch (err) {
      if (err instanceof LexError) {
        throw new ShellExpansionError(`failed to process ${goQuote(word)}: ${err.message}`, {
          cause: err,
        });
      }
      throw err;
    }
  }
}
