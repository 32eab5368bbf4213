/**
 * @kiln/dockerfile: the Dockerfile frontend. The shell lexer (variable expansion, word
 * splitting), the parser (BuildKit's tree, its AST dump, heredocs, directives), typed
 * instructions, conversion to LLB and image config, .dockerignore and its pattern matcher, and
 * the frontend registry (`dockerfile.v0`).
 */
export { DockerfileError, DOCKERFILE_PARSE } from './dockerfile-error.js';
export type { DockerfileErrorOptions } from './dockerfile-error.js';
export {
  DockerfileLimitError,
  DOCKERFILE_LIMIT_EXCEEDED,
  DEFAULT_FRONTEND_LIMITS,
  ExpansionBudget,
  frontendLimits,
} from './limits.js';
export type { FrontendLimits } from './limits.js';
export { formatDockerfileError, printSourceRange } from './format-error.js';
export type { LineRange } from './format-error.js';
export { goQuote } from './go/quote.js';

export { ShellLex } from './shell/lex.js';
export type { ProcessWordResult, ShellLexOptions } from './shell/lex.js';
export { ShellExpansionError, DOCKERFILE_EXPANSION } from './shell/shell-error.js';
export { emptyEnv, envFromList, envFromMap } from './shell/env.js';
export type { EnvGetter, EnvLike } from './shell/env.js';

export {
  parse,
  dumpAst,
  formatWarnings,
  DEFAULT_ESCAPE_TOKEN,
  MAX_LINE_BYTES,
} from './parser/parser.js';
export type { ParseResult, ParseWarning } from './parser/parser.js';
export { Node } from './parser/node.js';
export type { Heredoc } from './parser/node.js';
export { detectSyntax, parseDirective } from './parser/directives.js';
export type { Directive, DetectedDirective } from './parser/directives.js';
export { parseHeredoc, chompHeredocContent } from './parser/heredoc.js';

export {
  parseInstructions,
  parseInstruction,
  parseCommand,
  INSTRUCTIONS,
} from './instructions/parse.js';
export type { ParsedInstructions, Instruction } from './instructions/parse.js';
export type * from './instructions/commands.js';
export { kvString } from './instructions/commands.js';
export { BFlags, Flag } from './instructions/bflag.js';
export { parseMount } from './instructions/runmount.js';
export type { Mount, MountType, ShareMode, SingleWordExpander } from './instructions/runmount.js';

export {
  convertDockerfile,
  convertDockerfileSync,
  dockerfileToLLB,
  marshalResult,
  parseDockerfile,
} from './convert/convert.js';
export type {
  ConvertOptions,
  ConvertResult,
  ImageMetadata,
  MarshalResultOptions,
  MetaResolver,
  ParsedDockerfile,
  SyncMetaResolver,
} from './convert/convert.js';
export {
  imageConfigToJson,
  parseImageConfig,
  emptyImage,
  HISTORY_COMMENT,
  DEFAULT_PATH_ENV,
} from './convert/image-config.js';
export type {
  ImageConfig,
  ContainerConfig,
  HealthcheckConfig,
  HistoryEntry,
} from './convert/image-config.js';
export { defaultArgs, buildPlatformOpt } from './convert/platform.js';
export type { PlatformOpt } from './convert/platform.js';

export { readDockerignore, selectDockerignore, dockerignoreMatcher } from './dockerignore.js';
export type { ContextFiles, ContextMatcher } from './dockerignore.js';
export {
  PatternMatcher,
  Pattern,
  BadPatternError,
  matchesOrParentMatches,
} from './patterns/patternmatcher.js';
export type { MatchInfo } from './patterns/patternmatcher.js';

export {
  registerFrontend,
  getFrontend,
  listFrontends,
  dockerfileFrontend,
  convertOptionsFromAttrs,
} from './frontend.js';
export type {
  Frontend,
  FrontendInputs,
  FrontendResult,
  FrontendPlatformResult,
} from './frontend.js';
