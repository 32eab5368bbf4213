/**
 * @kiln/dockerfile: the Dockerfile frontend. Today: the shell lexer (variable expansion, word
 * splitting) and the parser (BuildKit's tree, its AST dump, heredocs, directives). Instruction
 * parsing and conversion to LLB come next, on top of these.
 */
export { DockerfileError, DOCKERFILE_PARSE } from './dockerfile-error.js';
export type { DockerfileErrorOptions } from './dockerfile-error.js';
export { formatDockerfileError, printSourceRange } from './format-error.js';
export type { LineRange } from './format-error.js';
export { goQuote } from './go/quote.js';

export { ShellLex } from './shell/lex.js';
export type { ProcessWordResult, ShellLexOptions } from './shell/lex.js';
export { ShellExpansionError, DOCKERFILE_EXPANSION } from './shell/shell-error.js';
export { emptyEnv, envFromList, envFromMap } from './shell/env.js';
export type { EnvGetter, EnvLike } from './shell/env.js';

export { parse, dumpAst, formatWarnings, DEFAULT_ESCAPE_TOKEN, MAX_LINE_BYTES } from './parser/parser.js';
export type { ParseResult, ParseWarning } from './parser/parser.js';
export { Node } from './parser/node.js';
export type { Heredoc } from './parser/node.js';
export { detectSyntax, parseDirective } from './parser/directives.js';
export type { Directive, DetectedDirective } from './parser/directives.js';
export { parseHeredoc, chompHeredocContent } from './parser/heredoc.js';
