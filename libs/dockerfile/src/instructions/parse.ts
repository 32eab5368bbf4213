/**
 * From the parser's tree to typed instructions (BuildKit's `instructions/parse.go`). Values are
 * kept as written; conversion expands them. Every error is a DockerfileError carrying the
 * instruction's line range.
 */
import { DockerfileError } from '../dockerfile-error.js';
import { DockerfileLimitError } from '../limits.js';
import { parseGoDuration } from '../go/duration.js';
import { chompHeredocContent, parseHeredoc } from '../parser/heredoc.js';
import type { Heredoc } from '../parser/node.js';
import type { Node } from '../parser/node.js';
import { BFlags } from './bflag.js';
import type {
  AddCommand,
  ArgCommand,
  CmdCommand,
  Command,
  CopyCommand,
  EntrypointCommand,
  EnvCommand,
  ExposeCommand,
  HealthCheckCommand,
  HealthConfig,
  KeyValuePair,
  KeyValuePairOptional,
  LabelCommand,
  MaintainerCommand,
  NetworkMode,
  OnbuildCommand,
  RunCommand,
  SecurityModeName,
  ShellCommand,
  ShellDependantCmdLine,
  SourcesAndDest,
  Stage,
  StopSignalCommand,
  UserCommand,
  VolumeCommand,
  WorkdirCommand,
} from './commands.js';
import { parseInt32, withSuggestion } from './go-helpers.js';
import { parseMount } from './runmount.js';

/** The 18 instructions, lower case. */
export const INSTRUCTIONS = [
  'add',
  'arg',
  'cmd',
  'copy',
  'entrypoint',
  'env',
  'expose',
  'from',
  'healthcheck',
  'label',
  'maintainer',
  'onbuild',
  'run',
  'shell',
  'stopsignal',
  'user',
  'volume',
  'workdir',
] as const;

/** Docker's minimum for a healthcheck duration. */
const MINIMUM_DURATION = 1e6;

interface ParseRequest {
  command: string;
  args: string[];
  heredocs: Heredoc[];
  attributes: Record<string, boolean>;
  flags: BFlags;
  original: string;
  startLine: number;
  endLine: number;
  comments: string[];
}

function nodeArgs(node: Node): string[] {
  const out: string[] = [];
  for (let n: Node = node; n.next !== undefined; n = n.next) {
    const arg = n.next;
    if (arg.children.length === 0) out.push(arg.value);
    else if (arg.children.length === 1) {
      // A sub-command (ONBUILD's instruction).
      out.push(arg.children[0]!.value, ...nodeArgs(arg.children[0]!));
    }
  }
  return out;
}

function requestFromNode(node: Node): ParseRequest {
  return {
    command: node.value.toLowerCase(),
    args: nodeArgs(node),
    heredocs: node.heredocs,
    attributes: node.attributes,
    original: node.original,
    flags: new BFlags(node.flags),
    startLine: node.startLine,
    endLine: node.endLine,
    comments: node.prevComment,
  };
}

function base(req: ParseRequest): {
  name: string;
  code: string;
  startLine: number;
  endLine: number;
} {
  return {
    name: req.command,
    code: req.original.trim(),
    startLine: req.startLine,
    endLine: req.endLine,
  };
}

function errAtLeastOneArgument(command: string): Error {
  return new Error(`${command} requires at least one argument`);
}
function errExactlyOneArgument(command: string): Error {
  return new Error(`${command} requires exactly one argument`);
}
function errNoDestinationArgument(command: string): Error {
  return new Error(
    `${command} requires at least two arguments, but only one was provided. Destination could not be determined`,
  );
}
function errBlankCommandNames(command: string): Error {
  return new Error(`${command} names can not be blank`);
}
function errTooManyArguments(command: string): Error {
  return new Error(`Bad input to ${command}, too many arguments`);
}

function parseKvps(args: string[], cmdName: string): KeyValuePair[] {
  if (args.length === 0) throw errAtLeastOneArgument(cmdName);
  // The parser gives key, value, separator triples (separator empty for the legacy `ENV k v`).
  if (args.length % 3 !== 0) throw errTooManyArguments(cmdName);
  const res: KeyValuePair[] = [];
  for (let j = 0; j < args.length; j += 3) {
    if (args[j]!.length === 0) throw errBlankCommandNames(cmdName);
    res.push({ key: args[j]!, value: args[j + 1]!, noDelim: args[j + 2] === '' });
  }
  return res;
}

function parseEnv(req: ParseRequest): EnvCommand {
  req.flags.parse();
  return { kind: 'env', ...base(req), env: parseKvps(req.args, 'ENV') };
}

function parseMaintainer(req: ParseRequest): MaintainerCommand {
  if (req.args.length !== 1) throw errExactlyOneArgument('MAINTAINER');
  req.flags.parse();
  return { kind: 'maintainer', ...base(req), maintainer: req.args[0]! };
}

function parseLabel(req: ParseRequest): LabelCommand {
  req.flags.parse();
  return { kind: 'label', ...base(req), labels: parseKvps(req.args, 'LABEL') };
}

function mustParseHeredoc(src: string): Heredoc | undefined {
  try {
    return parseHeredoc(src);
  } catch {
    // BuildKit's MustParseHeredoc: a word that is not a valid heredoc is a plain word.
    return undefined;
  }
}

function parseSourcesAndDest(req: ParseRequest, command: string): SourcesAndDest {
  const srcs = req.args.slice(0, -1);
  const dest = req.args[req.args.length - 1]!;
  if (mustParseHeredoc(dest))
    throw new Error(`${command} cannot accept a heredoc as a destination`);
  const lookup = new Map<string, Heredoc>();
  for (const h of req.heredocs) lookup.set(h.name, h);
  const sourcePaths: string[] = [];
  const sourceContents: SourcesAndDest['sourceContents'] = [];
  for (const src of srcs) {
    const h = mustParseHeredoc(src);
    if (h) {
      let content = lookup.get(h.name)?.content ?? '';
      if (h.chomp) content = chompHeredocContent(content);
      sourceContents.push({ data: content, path: h.name, expand: h.expand });
    } else {
      sourcePaths.push(src);
    }
  }
  return { destPath: dest, sourcePaths, sourceContents };
}

function parseAdd(req: ParseRequest): AddCommand {
  if (req.args.length < 2) throw errNoDestinationArgument('ADD');
  const flChown = req.flags.addString('chown', '');
  const flChmod = req.flags.addString('chmod', '');
  const flLink = req.flags.addBool('link', false);
  const flKeepGitDir = req.flags.addBool('keep-git-dir', false);
  const flChecksum = req.flags.addString('checksum', '');
  const flExclude = req.flags.addStrings('exclude');
  const flUnpack = req.flags.addBool('unpack', false);
  req.flags.parse();
  return {
    kind: 'add',
    ...base(req),
    ...parseSourcesAndDest(req, 'ADD'),
    chown: flChown.value,
    chmod: flChmod.value,
    link: flLink.isTrue(),
    keepGitDir: flKeepGitDir.isUsed() ? flKeepGitDir.isTrue() : undefined,
    checksum: flChecksum.value,
    excludePatterns: flExclude.stringValues,
    unpack: flUnpack.isUsed() ? flUnpack.isTrue() : undefined,
  };
}

function parseCopy(req: ParseRequest): CopyCommand {
  if (req.args.length < 2) throw errNoDestinationArgument('COPY');
  const flChown = req.flags.addString('chown', '');
  const flFrom = req.flags.addString('from', '');
  const flChmod = req.flags.addString('chmod', '');
  const flLink = req.flags.addBool('link', false);
  const flParents = req.flags.addBool('parents', false);
  const flExclude = req.flags.addStrings('exclude');
  req.flags.parse();
  return {
    kind: 'copy',
    ...base(req),
    ...parseSourcesAndDest(req, 'COPY'),
    from: flFrom.value,
    chown: flChown.value,
    chmod: flChmod.value,
    link: flLink.isTrue(),
    parents: flParents.isTrue(),
    excludePatterns: flExclude.stringValues,
  };
}

const VALID_STAGE_NAME = /^[a-z][a-z0-9-_.]*$/;

function parseBuildStageName(args: string[]): string {
  if (args.length === 3 && args[1]!.toLowerCase() === 'as') {
    const name = args[2]!.toLowerCase();
    if (!VALID_STAGE_NAME.test(name)) {
      throw new Error(
        `invalid name for build stage: ${JSON.stringify(args[2])}, name can't start with a number or contain symbols`,
      );
    }
    return name;
  }
  if (args.length !== 1) throw new Error('FROM requires either one or three arguments');
  return '';
}

function getComment(comments: string[], name: string): string {
  if (name === '') return '';
  for (const line of comments) if (line.startsWith(name + ' ')) return line.slice(name.length + 1);
  return '';
}

function parseFrom(req: ParseRequest): Stage {
  const name = parseBuildStageName(req.args);
  const flPlatform = req.flags.addString('platform', '');
  req.flags.parse();
  return {
    baseName: req.args[0]!,
    name,
    sourceCode: req.original.trim(),
    commands: [],
    platform: flPlatform.value,
    startLine: req.startLine,
    endLine: req.endLine,
    docComment: getComment(req.comments, name),
  };
}

function parseOnBuild(req: ParseRequest): OnbuildCommand {
  if (req.args.length === 0) throw errAtLeastOneArgument('ONBUILD');
  req.flags.parse();
  const trigger = req.args[0]!.trim().toUpperCase();
  if (trigger === 'ONBUILD')
    throw new Error("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed");
  if (trigger === 'MAINTAINER' || trigger === 'FROM')
    throw new Error(`${trigger} isn't allowed as an ONBUILD trigger`);
  let original = req.original.replace(/^\s*ONBUILD\s*/i, '');
  for (const h of req.heredocs) original += '\n' + h.content + h.name;
  return { kind: 'onbuild', ...base(req), expression: original };
}

function parseWorkdir(req: ParseRequest): WorkdirCommand {
  if (req.args.length !== 1) throw errExactlyOneArgument('WORKDIR');
  req.flags.parse();
  return { kind: 'workdir', ...base(req), path: req.args[0]! };
}

function handleJSONArgs(args: string[], attributes: Record<string, boolean>): string[] {
  if (args.length === 0) return [];
  if (attributes.json) return args;
  // A shell-form command line: one string.
  return [args.join(' ')];
}

function parseShellDependentCommand(req: ParseRequest): ShellDependantCmdLine {
  return {
    cmdLine: handleJSONArgs(req.args, req.attributes),
    files: req.heredocs.map((h) => ({ name: h.name, data: h.content, chomp: h.chomp })),
    prependShell: !req.attributes.json,
  };
}

const NETWORK_MODES: readonly NetworkMode[] = ['default', 'none', 'host'];
const SECURITY_MODES: readonly SecurityModeName[] = ['sandbox', 'insecure'];

function parseRun(req: ParseRequest): RunCommand {
  const flMount = req.flags.addStrings('mount');
  const flNetwork = req.flags.addString('network', '');
  const flSecurity = req.flags.addString('security', '');
  req.flags.parse();
  let network: NetworkMode | undefined;
  if (flNetwork.value !== '') {
    if (!NETWORK_MODES.includes(flNetwork.value as NetworkMode)) {
      throw new Error(`unsupported network mode ${JSON.stringify(flNetwork.value)}`);
    }
    network = flNetwork.value as NetworkMode;
  }
  let security: SecurityModeName | undefined;
  if (flSecurity.value !== '') {
    if (!SECURITY_MODES.includes(flSecurity.value as SecurityModeName)) {
      throw new Error(`security mode ${JSON.stringify(flSecurity.value)} is not valid`);
    }
    security = flSecurity.value as SecurityModeName;
  }
  const mountSpecs = flMount.stringValues;
  return {
    kind: 'run',
    ...base(req),
    ...parseShellDependentCommand(req),
    mountSpecs,
    mounts: mountSpecs.map((s) => parseMount(s)),
    network,
    security,
    flagsUsed: req.flags.usedNames(),
  };
}

function parseCmd(req: ParseRequest): CmdCommand {
  req.flags.parse();
  return { kind: 'cmd', ...base(req), ...parseShellDependentCommand(req) };
}

function parseEntrypoint(req: ParseRequest): EntrypointCommand {
  req.flags.parse();
  return { kind: 'entrypoint', ...base(req), ...parseShellDependentCommand(req) };
}

function parseOptInterval(name: string, value: string): number {
  if (value === '') return 0;
  const d = parseGoDuration(value);
  if (d === 0) return 0;
  if (d < MINIMUM_DURATION)
    throw new Error(`Interval ${JSON.stringify(name)} cannot be less than 1ms`);
  return d;
}

function parseHealthcheck(req: ParseRequest): HealthCheckCommand {
  if (req.args.length === 0) throw errAtLeastOneArgument('HEALTHCHECK');
  let typ = req.args[0]!.toUpperCase();
  const args = req.args.slice(1);
  const b = base(req);
  if (typ === 'NONE') {
    if (args.length !== 0) throw new Error('HEALTHCHECK NONE takes no arguments');
    return {
      kind: 'healthcheck',
      ...b,
      health: {
        test: ['NONE'],
        interval: 0,
        timeout: 0,
        startPeriod: 0,
        startInterval: 0,
        retries: 0,
      },
    };
  }
  const flInterval = req.flags.addString('interval', '');
  const flTimeout = req.flags.addString('timeout', '');
  const flStartPeriod = req.flags.addString('start-period', '');
  const flStartInterval = req.flags.addString('start-interval', '');
  const flRetries = req.flags.addString('retries', '');
  req.flags.parse();
  if (typ !== 'CMD')
    throw new Error(`Unknown type ${JSON.stringify(typ)} in HEALTHCHECK (try CMD)`);
  const cmdSlice = handleJSONArgs(args, req.attributes);
  if (cmdSlice.length === 0) throw new Error('Missing command after HEALTHCHECK CMD');
  if (!req.attributes.json) typ = 'CMD-SHELL';
  const health: HealthConfig = {
    test: [typ, ...cmdSlice],
    interval: parseOptInterval('interval', flInterval.value),
    timeout: parseOptInterval('timeout', flTimeout.value),
    startPeriod: parseOptInterval('start-period', flStartPeriod.value),
    startInterval: parseOptInterval('start-interval', flStartInterval.value),
    retries: 0,
  };
  if (flRetries.value !== '') {
    const retries = parseInt32(flRetries.value);
    if (retries === undefined)
      throw new Error(
        `strconv.ParseInt: parsing ${JSON.stringify(flRetries.value)}: invalid syntax`,
      );
    if (retries < 0) throw new Error(`--retries cannot be negative (${retries})`);
    health.retries = retries;
  }
  return { kind: 'healthcheck', ...b, health };
}

function parseExpose(req: ParseRequest): ExposeCommand {
  if (req.args.length === 0) throw errAtLeastOneArgument('EXPOSE');
  req.flags.parse();
  return { kind: 'expose', ...base(req), ports: [...req.args].sort() };
}

function parseUser(req: ParseRequest): UserCommand {
  if (req.args.length !== 1) throw errExactlyOneArgument('USER');
  req.flags.parse();
  return { kind: 'user', ...base(req), user: req.args[0]! };
}

function parseVolume(req: ParseRequest): VolumeCommand {
  if (req.args.length === 0) throw errAtLeastOneArgument('VOLUME');
  req.flags.parse();
  const volumes: string[] = [];
  for (const v of req.args) {
    const t = v.trim();
    if (t === '') throw new Error('VOLUME specified can not be an empty string');
    volumes.push(t);
  }
  return { kind: 'volume', ...base(req), volumes };
}

function parseStopSignal(req: ParseRequest): StopSignalCommand {
  if (req.args.length !== 1) throw errExactlyOneArgument('STOPSIGNAL');
  req.flags.parse();
  return { kind: 'stopsignal', ...base(req), signal: req.args[0]! };
}

function parseArg(req: ParseRequest): ArgCommand {
  if (req.args.length < 1) throw errAtLeastOneArgument('ARG');
  req.flags.parse();
  const args: KeyValuePairOptional[] = req.args.map((arg) => {
    // A name, or name=default; unlike ENV the split happens here.
    const i = arg.indexOf('=');
    if (i >= 0) {
      if (i === 0) throw errBlankCommandNames('ARG');
      const key = arg.slice(0, i);
      return { key, value: arg.slice(i + 1), comment: getComment(req.comments, key) };
    }
    return { key: arg, value: undefined, comment: getComment(req.comments, arg) };
  });
  return { kind: 'arg', ...base(req), args };
}

function parseShell(req: ParseRequest): ShellCommand {
  req.flags.parse();
  const shell = handleJSONArgs(req.args, req.attributes);
  if (shell.length === 0) throw errAtLeastOneArgument('SHELL');
  if (!req.attributes.json) throw new Error(`SHELL requires the arguments to be in JSON form`);
  return { kind: 'shell', ...base(req), shell };
}

/** A FROM (a new stage) or a command. */
export type Instruction = { kind: 'from'; stage: Stage } | { kind: 'command'; command: Command };

function located(err: unknown, node: Node): DockerfileError {
  if (err instanceof DockerfileLimitError) return err.at(node);
  if (err instanceof DockerfileError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new DockerfileError(message, {
    startLine: node.startLine,
    endLine: node.endLine,
    cause: err,
  });
}

/** Converts one node of the tree to a typed instruction; throws DockerfileError with its lines. */
export function parseInstruction(node: Node): Instruction {
  const req = requestFromNode(node);
  try {
    switch (req.command) {
      case 'from':
        return { kind: 'from', stage: parseFrom(req) };
      case 'env':
        return { kind: 'command', command: parseEnv(req) };
      case 'maintainer':
        return { kind: 'command', command: parseMaintainer(req) };
      case 'label':
        return { kind: 'command', command: parseLabel(req) };
      case 'add':
        return { kind: 'command', command: parseAdd(req) };
      case 'copy':
        return { kind: 'command', command: parseCopy(req) };
      case 'onbuild':
        return { kind: 'command', command: parseOnBuild(req) };
      case 'workdir':
        return { kind: 'command', command: parseWorkdir(req) };
      case 'run':
        return { kind: 'command', command: parseRun(req) };
      case 'cmd':
        return { kind: 'command', command: parseCmd(req) };
      case 'healthcheck':
        return { kind: 'command', command: parseHealthcheck(req) };
      case 'entrypoint':
        return { kind: 'command', command: parseEntrypoint(req) };
      case 'expose':
        return { kind: 'command', command: parseExpose(req) };
      case 'user':
        return { kind: 'command', command: parseUser(req) };
      case 'volume':
        return { kind: 'command', command: parseVolume(req) };
      case 'stopsignal':
        return { kind: 'command', command: parseStopSignal(req) };
      case 'arg':
        return { kind: 'command', command: parseArg(req) };
      case 'shell':
        return { kind: 'command', command: parseShell(req) };
    }
  } catch (err) {
    throw located(err, node);
  }
  throw new DockerfileError(
    withSuggestion(
      `unknown instruction: ${node.value}`,
      node.value,
      INSTRUCTIONS.map((i) => i.toUpperCase()),
      false,
    ),
    { startLine: node.startLine, endLine: node.endLine },
  );
}

/** Converts a node to a command; a FROM is an error here (ONBUILD triggers). */
export function parseCommand(node: Node): Command {
  const ins = parseInstruction(node);
  if (ins.kind === 'from') {
    throw new DockerfileError('Stage is not a command type', {
      startLine: node.startLine,
      endLine: node.endLine,
    });
  }
  return ins.command;
}

/** The stages of a Dockerfile and the ARGs before its first FROM. */
export interface ParsedInstructions {
  stages: Stage[];
  metaArgs: ArgCommand[];
}

/**
 * Converts the parser's tree into stages (BuildKit's `instructions.Parse`). Errors read
 * `dockerfile parse error on line N: ...`, as BuildKit's do.
 */
export function parseInstructions(ast: Node): ParsedInstructions {
  const stages: Stage[] = [];
  const metaArgs: ArgCommand[] = [];
  for (const n of ast.children) {
    let ins: Instruction;
    try {
      ins = parseInstruction(n);
    } catch (err) {
      const e = located(err, n);
      throw new DockerfileError(`dockerfile parse error on line ${n.startLine}: ${e.message}`, {
        startLine: e.startLine,
        endLine: e.endLine,
        cause: err,
      });
    }
    if (ins.kind === 'from') {
      stages.push(ins.stage);
      continue;
    }
    if (stages.length === 0) {
      if (ins.command.kind === 'arg') {
        metaArgs.push(ins.command);
        continue;
      }
      throw new DockerfileError('no build stage in current context', {
        startLine: n.startLine,
        endLine: n.endLine,
      });
    }
    stages[stages.length - 1]!.commands.push(ins.command);
  }
  return { stages, metaArgs };
}
