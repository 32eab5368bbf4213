/** Helpers shared by the conversion files (kept apart so that they import no conversion file). */
import { posix } from 'node:path';
import { formatPlatform, parsePlatform } from '@kiln/llb';
import type { HostIP, Platform, ProxyEnv, State, Ulimit } from '@kiln/llb';
import { DockerfileError } from '../dockerfile-error.js';
import type { Location } from '../instructions/commands.js';
import type { EnvGetter } from '../shell/env.js';
import type { ShellLex } from '../shell/lex.js';
import { DockerfileLimitError } from '../limits.js';
import type { DispatchState, DispatchStates } from './dispatch-state.js';
import { formatTargetPlatform } from './platform.js';

/** What every dispatch function may read (BuildKit's dispatchOpt). */
export interface DispatchOpt {
  allDispatchStates: DispatchStates;
  globalArgs: ReadonlyMap<string, string>;
  buildArgValues: Readonly<Record<string, string>>;
  shlex: ShellLex;
  /** The build context, resolved once every stage is converted (see DeferredContext). */
  buildContext: State;
  proxyEnv: ProxyEnv | undefined;
  cacheIdNamespace: string;
  targetPlatform: Platform;
  buildPlatforms: Platform[];
  /** Timestamp for history entries and file ops (SOURCE_DATE_EPOCH), undefined when unset. */
  epoch: Date | undefined;
  /** Used to make progress-group ids; deterministic per conversion. */
  newId: () => string;
  /** `--add-host` entries for RUN. */
  extraHosts: readonly HostIP[];
  /** `--shm-size` in bytes (0: the runtime's /dev/shm). */
  shmSize: number;
  /** `--ulimit` entries for RUN. */
  ulimits: readonly Ulimit[];
  /** Notes that a state's op comes from an instruction (the source map). */
  locate: (state: State, loc: Location) => State;
}

/** The environment of a state, as the shell lexer wants it. */
export function getEnv(state: State): EnvGetter {
  const env = state.values.env;
  return {
    get: (k) => env.find(([key]) => key === k)?.[1],
    keys: () => env.map(([k]) => k),
  };
}

/** Throws `err` as a DockerfileError at `loc` (an existing DockerfileError keeps its lines). */
export function withLocation(err: unknown, loc: Location): DockerfileError {
  if (err instanceof DockerfileLimitError) return err.at(loc);
  if (err instanceof DockerfileError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new DockerfileError(message, {
    startLine: loc.startLine,
    endLine: loc.endLine,
    cause: err,
  });
}

/** The description BuildKit puts on every vertex made for an instruction. */
export function dfCmd(code: string): Record<string, string> {
  return { 'com.docker.dockerfile.v1.command': code };
}

/** `run echo hi` -> `RUN echo hi`. */
export function uppercaseCmd(str: string): string {
  const i = str.indexOf(' ');
  return i < 0 ? str.toUpperCase() : str.slice(0, i).toUpperCase() + str.slice(i);
}

/** Expands variables in a step name; the name as written if expansion fails. */
export function processCmdEnv(shlex: ShellLex, cmd: string, env: EnvGetter): string {
  try {
    return shlex.processWord(cmd, env);
  } catch {
    // A name is cosmetic: BuildKit keeps the text as written when it cannot be expanded.
    return cmd;
  }
}

function platformFromEnv(env: EnvGetter): Partial<Platform> | undefined {
  const p: { os?: string; architecture?: string; variant?: string } = {};
  let set = false;
  for (const key of env.keys()) {
    const v = env.get(key) ?? '';
    switch (key) {
      case 'TARGETPLATFORM':
        try {
          return parsePlatform(v);
        } catch {
          // An unparsable TARGETPLATFORM is ignored for naming, as BuildKit does.
          continue;
        }
      case 'TARGETOS':
        p.os = v;
        set = true;
        break;
      case 'TARGETARCH':
        p.architecture = v;
        set = true;
        break;
      case 'TARGETVARIANT':
        p.variant = v;
        set = true;
        break;
    }
  }
  return set ? p : undefined;
}

/**
 * The progress name of a step: `[stage 2/5] RUN ...` (BuildKit's prefixCommand). Counts the step:
 * each call advances the stage's index.
 */
export function prefixCommand(
  ds: DispatchState,
  str: string,
  prefixPlatform: boolean,
  platform: Platform | undefined,
  env: EnvGetter,
): string {
  if (ds.cmdTotal === 0) return str;
  let out = '[';
  if (prefixPlatform && platform)
    out += formatPlatform(platform) + formatTargetPlatform(platform, platformFromEnv(env)) + ' ';
  if (ds.stageName !== '') out += ds.stageName + ' ';
  ds.cmdIndex++;
  const width = Math.trunc(1 + Math.log10(ds.cmdTotal));
  out += `${String(ds.cmdIndex).padStart(width, ' ')}/${ds.cmdTotal}] `;
  if (ds.cmdIsOnBuild) out += 'ONBUILD ';
  return out + str;
}

/**
 * BuildKit's system.NormalizePath for Linux: `p` made absolute against `parent` and cleaned; with
 * `keepSlash`, a trailing `/` or `/.` survives (it means "into this directory").
 */
export function normalizePath(parent: string, p: string, keepSlash: boolean): string {
  const orig = p;
  let out = posix.isAbsolute(p)
    ? p
    : posix.join(posix.isAbsolute(parent) ? parent : '/' + parent, p);
  out = posix.normalize(out);
  if (out.length > 1 && out.endsWith('/')) out = out.slice(0, -1);
  if (keepSlash) {
    if (orig.endsWith('/') && !out.endsWith('/')) out += '/';
    else if (orig.endsWith('/.')) {
      if (out !== '/') out += '/';
      out += '.';
    }
  }
  return out;
}

/** The destination of COPY/ADD against the working directory (pathRelativeToWorkingDir). */
export function pathRelativeToWorkingDir(state: State, p: string): string {
  if (posix.isAbsolute(p)) return normalizePath('/', p, true);
  if (p === '.' || p === '') p = './';
  return normalizePath(state.getDir(), p, true);
}

/** Go's path.Join("/", p). */
export function joinRoot(p: string): string {
  return posix.normalize(posix.join('/', p)).replace(/(.)\/$/, '$1');
}
