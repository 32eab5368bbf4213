import { posix } from 'node:path';
import { pb } from '@kiln/protocol';
import { ExecOp } from './exec.js';
import type { RunOptions } from './exec.js';
import { FileOp } from './fileop.js';
import type { FileAction } from './fileop.js';
import { normalizePlatform } from '@kiln/protocol';
import type { Platform } from '@kiln/protocol';
import { shlexSplit } from './shlex.js';
import { constraintsFrom } from './vertex.js';
import type { ConstraintsOptions, Output } from './vertex.js';

export type NetMode = pb.NetMode;
export const NetMode = pb.NetMode;
export type SecurityMode = pb.SecurityMode;
export const SecurityMode = pb.SecurityMode;

export interface HostIP {
  readonly host: string;
  readonly ip: string;
}

export interface Ulimit {
  readonly name: string;
  readonly soft: number;
  readonly hard: number;
}

/** The values a State carries for the ops built on it (BuildKit's state keys). */
export interface StateValues {
  readonly env: readonly (readonly [string, string])[];
  readonly dir?: string;
  readonly user?: string;
  readonly hostname?: string;
  readonly args?: readonly string[];
  readonly network?: NetMode;
  readonly security?: SecurityMode;
  readonly platform?: Platform;
  readonly extraHosts?: readonly HostIP[];
  readonly ulimits?: readonly Ulimit[];
  readonly cgroupParent?: string;
  readonly validExitCodes?: readonly number[];
}

const EMPTY: StateValues = Object.freeze({ env: Object.freeze([]) });

/**
 * An immutable point in the build graph: an output of a vertex (or nothing: scratch) plus the
 * values (env, working dir, user, platform...) that ops built on it inherit. Every method returns
 * a new State; a State can be shared freely.
 */
export class State {
  /** @internal use the source functions (image, local, scratch...) to create states. */
  constructor(
    readonly output: Output | undefined,
    readonly values: StateValues = EMPTY,
  ) {}

  /** A state for a vertex output, with the working directory set to `/` as BuildKit does. */
  static of(output: Output | undefined, values: StateValues = EMPTY): State {
    return new State(output, { ...values, dir: '/' });
  }

  protected with(v: Partial<StateValues>): State {
    return new State(this.output, { ...this.values, ...v });
  }

  /** The same values on top of another output. */
  withOutput(output: Output | undefined): State {
    return new State(output, this.values);
  }

  // ---- environment and process values ----
  addEnv(key: string, value: string): State {
    return this.with({ env: [...this.values.env.filter(([k]) => k !== key), [key, value]] });
  }

  delEnv(key: string): State {
    return this.with({ env: this.values.env.filter(([k]) => k !== key) });
  }

  getEnv(key: string): string | undefined {
    return this.values.env.find(([k]) => k === key)?.[1];
  }

  env(): string[] {
    return this.values.env.map(([k, v]) => `${k}=${v}`);
  }

  /** Sets the working directory; relative paths are joined onto the current one. */
  dir(path: string): State {
    const d = posix.isAbsolute(path) ? path : posix.join(this.values.dir || '/', path);
    return this.with({ dir: d });
  }

  getDir(): string {
    return this.values.dir ?? '';
  }

  user(user: string): State {
    return this.with({ user });
  }

  hostname(hostname: string): State {
    return this.with({ hostname });
  }

  args(...args: string[]): State {
    return this.with({ args });
  }

  /** Splits a command line like a shell would (no expansion) and sets it as args. */
  shlex(command: string): State {
    return this.with({ args: shlexSplit(command) });
  }

  network(mode: NetMode): State {
    return this.with({ network: mode });
  }

  security(mode: SecurityMode): State {
    return this.with({ security: mode });
  }

  platform(p: Platform): State {
    return this.with({ platform: normalizePlatform(p) });
  }

  getPlatform(): Platform | undefined {
    return this.values.platform;
  }

  addExtraHost(host: string, ip: string): State {
    return this.with({ extraHosts: [...(this.values.extraHosts ?? []), { host, ip }] });
  }

  addUlimit(name: string, soft: number, hard: number): State {
    return this.with({ ulimits: [...(this.values.ulimits ?? []), { name, soft, hard }] });
  }

  cgroupParent(parent: string): State {
    return this.with({ cgroupParent: parent });
  }

  validExitCodes(...codes: number[]): State {
    return this.with({ validExitCodes: codes });
  }

  // ---- ops ----
  /** Runs a command on this state's filesystem (BuildKit's State.Run). */
  run(opts: RunOptions = {}): ExecState {
    const base = applyRunValues(this, opts);
    const exec = new ExecOp(base, opts);
    // Like BuildKit, the result keeps this state's values: run options apply to the command only.
    return new ExecState(exec.rootOutput(), this.values, exec);
  }

  /** Applies a chain of file actions to this state (BuildKit's State.File). */
  file(action: FileAction, opts?: ConstraintsOptions): State {
    const op = new FileOp(this, action, constraintsFrom(opts));
    return this.withOutput(op.output);
  }

  isScratch(): boolean {
    return this.output === undefined;
  }
}

function applyRunValues(s: State, o: RunOptions): State {
  let st = s;
  if (o.args) st = st.args(...o.args);
  if (o.shlex !== undefined) st = st.shlex(o.shlex);
  if (o.env) for (const [k, v] of Object.entries(o.env)) st = st.addEnv(k, v);
  if (o.dir !== undefined) st = st.dir(o.dir);
  if (o.user !== undefined) st = st.user(o.user);
  if (o.hostname !== undefined) st = st.hostname(o.hostname);
  if (o.network !== undefined) st = st.network(o.network);
  if (o.security !== undefined) st = st.security(o.security);
  if (o.extraHosts) for (const h of o.extraHosts) st = st.addExtraHost(h.host, h.ip);
  if (o.ulimits) for (const u of o.ulimits) st = st.addUlimit(u.name, u.soft, u.hard);
  if (o.cgroupParent !== undefined) st = st.cgroupParent(o.cgroupParent);
  if (o.validExitCodes) st = st.validExitCodes(...o.validExitCodes);
  return st;
}

/** The result of `run`: the root filesystem after the command, plus its other mounts. */
export class ExecState extends State {
  constructor(
    output: Output | undefined,
    values: StateValues,
    private readonly exec: ExecOp,
  ) {
    super(output, values);
  }

  /** The state of the mount at `target` after the command (its output, or its source if read-only). */
  getMount(target: string): State {
    return State.of(this.exec.mountOutput(target));
  }

  root(): State {
    return new State(this.output, this.values);
  }
}

/** The empty filesystem (with the working directory `/`, as BuildKit's Scratch is NewState(nil)). */
export function scratch(): State {
  return State.of(undefined);
}
