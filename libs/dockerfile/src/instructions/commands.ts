/**
 * The typed instructions of a Dockerfile (BuildKit's `instructions/commands.go`). Each command
 * keeps its keyword (lower case), its source text and its line range; values are as written,
 * variables are expanded later, during conversion, against the stage's environment.
 */
import type { Mount } from './runmount.js';

/** Lines of an instruction, 1-based, inclusive. */
export interface Location {
  startLine: number;
  endLine: number;
}

interface Base extends Location {
  /** The keyword, lower case (`run`, `copy`...). */
  name: string;
  /** The instruction as written, continuations joined, trimmed: its name in progress output. */
  code: string;
}

export interface KeyValuePair {
  key: string;
  value: string;
  /** Written in the legacy `KEY value` form. */
  noDelim?: boolean;
}

/** An ARG: a name and, when given, a default. */
export interface KeyValuePairOptional {
  key: string;
  value: string | undefined;
  comment: string;
}

/** A heredoc used as the body of a RUN/CMD/ENTRYPOINT. */
export interface ShellInlineFile {
  name: string;
  data: string;
  chomp: boolean;
}

/** A heredoc used as a COPY/ADD source. */
export interface SourceContent {
  path: string;
  data: string;
  expand: boolean;
}

/** Command line of RUN, CMD and ENTRYPOINT: JSON (exec) form, or shell form with the shell prepended. */
export interface ShellDependantCmdLine {
  cmdLine: string[];
  files: ShellInlineFile[];
  prependShell: boolean;
}

export interface EnvCommand extends Base {
  kind: 'env';
  env: KeyValuePair[];
}
export interface MaintainerCommand extends Base {
  kind: 'maintainer';
  maintainer: string;
}
export interface LabelCommand extends Base {
  kind: 'label';
  labels: KeyValuePair[];
}
export interface SourcesAndDest {
  destPath: string;
  sourcePaths: string[];
  sourceContents: SourceContent[];
}
export interface AddCommand extends Base, SourcesAndDest {
  kind: 'add';
  chown: string;
  chmod: string;
  link: boolean;
  /** Undefined when the flag is absent (a git URL's `keep-git-dir=` may still set it). */
  keepGitDir: boolean | undefined;
  checksum: string;
  excludePatterns: string[];
  /** `--unpack`: undefined means BuildKit's default (local archives unpacked, URLs not). */
  unpack: boolean | undefined;
}
export interface CopyCommand extends Base, SourcesAndDest {
  kind: 'copy';
  from: string;
  chown: string;
  chmod: string;
  link: boolean;
  parents: boolean;
  excludePatterns: string[];
}
export interface OnbuildCommand extends Base {
  kind: 'onbuild';
  expression: string;
}
export interface WorkdirCommand extends Base {
  kind: 'workdir';
  path: string;
}
export type NetworkMode = 'default' | 'none' | 'host';
export type SecurityModeName = 'sandbox' | 'insecure';
export interface RunCommand extends Base, ShellDependantCmdLine {
  kind: 'run';
  /** The raw `--mount` values; parsed (and expanded) by parseMount. */
  mountSpecs: string[];
  /** Mounts as parsed without expansion (only `from` is known at this point, as in BuildKit). */
  mounts: Mount[];
  network: NetworkMode | undefined;
  security: SecurityModeName | undefined;
  flagsUsed: string[];
}
export interface CmdCommand extends Base, ShellDependantCmdLine {
  kind: 'cmd';
}
export interface EntrypointCommand extends Base, ShellDependantCmdLine {
  kind: 'entrypoint';
}
/** A healthcheck; durations in nanoseconds, 0 when unset. `test` is `["NONE"]` for HEALTHCHECK NONE. */
export interface HealthConfig {
  test: string[];
  interval: number;
  timeout: number;
  startPeriod: number;
  startInterval: number;
  retries: number;
}
export interface HealthCheckCommand extends Base {
  kind: 'healthcheck';
  health: HealthConfig;
}
export interface ExposeCommand extends Base {
  kind: 'expose';
  ports: string[];
}
export interface UserCommand extends Base {
  kind: 'user';
  user: string;
}
export interface VolumeCommand extends Base {
  kind: 'volume';
  volumes: string[];
}
export interface StopSignalCommand extends Base {
  kind: 'stopsignal';
  signal: string;
}
export interface ArgCommand extends Base {
  kind: 'arg';
  args: KeyValuePairOptional[];
}
export interface ShellCommand extends Base {
  kind: 'shell';
  shell: string[];
}

export type Command =
  | EnvCommand
  | MaintainerCommand
  | LabelCommand
  | AddCommand
  | CopyCommand
  | OnbuildCommand
  | WorkdirCommand
  | RunCommand
  | CmdCommand
  | EntrypointCommand
  | HealthCheckCommand
  | ExposeCommand
  | UserCommand
  | VolumeCommand
  | StopSignalCommand
  | ArgCommand
  | ShellCommand;

/** A build stage: its FROM and the commands after it. */
export interface Stage extends Location {
  /** `AS name`, lower case; empty for an unnamed stage. */
  name: string;
  /** The image or stage it starts from, as written (variables unexpanded). */
  baseName: string;
  /** `--platform`, as written. */
  platform: string;
  /** The FROM line as written. */
  sourceCode: string;
  commands: Command[];
  /** The comment before FROM that starts with the stage name (BuildKit's doc comment). */
  docComment: string;
}

/** The words BuildKit writes for a KeyValuePair (ENV and LABEL history). */
export function kvString(kv: KeyValuePair): string {
  return `${kv.key}=${kv.value}`;
}
