import { pb } from '@kiln/protocol';
import { Caps, EMPTY_INPUT, ROOT_MOUNT, SKIP_OUTPUT } from './constants.js';
import type { HostIP, NetMode, SecurityMode, State, Ulimit } from './state.js';
import {
  Output,
  addCaps,
  buildError,
  constraintsFrom,
  finishOp,
  inputsEqual,
  marshalConstraints,
} from './vertex.js';
import type {
  Constraints,
  ConstraintsOptions,
  MarshaledVertex,
  Vertex,
  MarshalContext,
} from './vertex.js';

export type CacheSharing = 'shared' | 'private' | 'locked';

/** A filesystem mounted into the command. Without `source` (or with scratch) it starts empty. */
export interface MountSpec {
  target: string;
  source?: State;
  readonly?: boolean;
  /** Mount only this path of the source. */
  selector?: string;
  /** A persistent cache directory shared across builds. */
  cache?: { id: string; sharing?: CacheSharing };
  /** A tmpfs; `size` in bytes (0: the runtime's default). */
  tmpfs?: { size?: number };
  /** Writable but not an output of the vertex. */
  noOutput?: boolean;
  contentCache?: pb.MountContentCache;
}

export interface SecretSpec {
  id: string;
  /** Where the secret file appears; omit for an env-only secret. */
  target?: string;
  /** Expose as this environment variable. */
  env?: string;
  uid?: number;
  gid?: number;
  /** File mode, default 0o400. */
  mode?: number;
  optional?: boolean;
}

export interface SSHSpec {
  id?: string;
  target?: string;
  uid?: number;
  gid?: number;
  /** Socket mode, default 0o600. */
  mode?: number;
  optional?: boolean;
}

export interface ProxyEnv {
  httpProxy?: string;
  httpsProxy?: string;
  ftpProxy?: string;
  noProxy?: string;
  allProxy?: string;
}

export interface RunOptions extends ConstraintsOptions {
  args?: string[];
  shlex?: string;
  env?: Record<string, string>;
  dir?: string;
  user?: string;
  hostname?: string;
  network?: NetMode;
  security?: SecurityMode;
  extraHosts?: HostIP[];
  ulimits?: Ulimit[];
  cgroupParent?: string;
  validExitCodes?: number[];
  mounts?: MountSpec[];
  secrets?: SecretSpec[];
  ssh?: SSHSpec[];
  readonlyRootfs?: boolean;
  proxyEnv?: ProxyEnv;
}

interface Mount {
  readonly target: string;
  readonly source: Output | undefined;
  readonly readonly: boolean;
  readonly selector: string;
  readonly cacheId: string;
  readonly cacheSharing: CacheSharing;
  readonly tmpfs: boolean;
  readonly tmpfsSize: number;
  readonly noOutput: boolean;
  readonly contentCache: pb.MountContentCache;
  output: Output | undefined;
}

function producesOutput(m: Mount): boolean {
  return !m.noOutput && !m.readonly && !m.tmpfs && m.cacheId === '';
}

/** ExecOp: a command run in a container over a root mount and extra mounts. */
export class ExecOp implements Vertex {
  private readonly mounts: Mount[];
  private readonly constraints: Constraints;
  private readonly secrets: SecretSpec[];
  private readonly ssh: (SSHSpec & { mode: number })[];
  private readonly root: Output | undefined;

  constructor(
    private readonly base: State,
    private readonly opts: RunOptions,
  ) {
    this.constraints = constraintsFrom(opts);
    const rootMount = this.newMount(
      { target: ROOT_MOUNT, readonly: opts.readonlyRootfs },
      base.output,
    );
    const mounts = [rootMount];
    for (const m of opts.mounts ?? []) {
      if (!m.target) throw buildError('mount target is required');
      mounts.push(this.newMount(m, m.source?.output));
    }
    // BuildKit sorts mounts by target; a stable sort keeps equal targets in the order given.
    this.mounts = mounts.sort((a, b) => (a.target < b.target ? -1 : a.target > b.target ? 1 : 0));
    this.root = rootMount.output;
    this.secrets = (opts.secrets ?? []).map((s) => ({ mode: 0o400, ...s }));
    this.ssh = (opts.ssh ?? []).map((s) => ({ mode: 0o600, ...s }));
  }

  private newMount(m: Omit<MountSpec, 'source'>, source: Output | undefined): Mount {
    const mount: Mount = {
      target: m.target,
      source,
      readonly: m.readonly ?? false,
      selector: m.selector ?? '',
      cacheId: m.cache?.id ?? '',
      cacheSharing: m.cache?.sharing ?? 'shared',
      tmpfs: m.tmpfs !== undefined,
      tmpfsSize: m.tmpfs?.size ?? 0,
      noOutput: m.noOutput ?? false,
      contentCache: m.contentCache ?? pb.MountContentCache.DEFAULT,
      output: undefined,
    };
    if (mount.cacheId && !m.cache?.id) throw buildError('cache mount needs an id');
    if (mount.readonly) mount.output = source;
    else if (producesOutput(mount)) mount.output = new Output(this, () => this.outputIndex(mount));
    return mount;
  }

  private outputIndex(m: Mount): number {
    let i = 0;
    for (const m2 of this.mounts) {
      if (!producesOutput(m2)) continue;
      if (m2 === m) return i;
      i++;
    }
    throw buildError(`invalid mount: ${m.target}`);
  }

  rootOutput(): Output | undefined {
    return this.root;
  }

  mountOutput(target: string): Output | undefined {
    const m = this.mounts.find((x) => x.target === target);
    if (!m) throw buildError(`no mount at ${target}`);
    if (!m.output && !m.readonly && m.source === undefined && !producesOutput(m)) {
      throw buildError(`mount ${target} is not an output (cache, tmpfs or no-output)`);
    }
    return m.output;
  }

  inputs(): readonly Output[] {
    const seen = new Set<Output>();
    const out: Output[] = [];
    for (const m of this.mounts) {
      if (m.source && !seen.has(m.source)) {
        seen.add(m.source);
        out.push(m.source);
      }
    }
    return out;
  }

  marshal(ctx: MarshalContext): MarshaledVertex {
    const v = this.base.values;
    const args = v.args ?? [];
    if (args.length === 0) throw buildError('exec: arguments are required');
    const cwd = v.dir ?? '';
    if (cwd === '') throw buildError('exec: working directory is required');

    let env = [...v.env];
    const ssh = this.ssh.map((s, i) => ({
      ...s,
      target: s.target || `/run/buildkit/ssh_agent.${i}`,
    }));
    if (ssh.length > 0 && !env.some(([k]) => k === 'SSH_AUTH_SOCK')) {
      env = [...env, ['SSH_AUTH_SOCK', ssh[0]!.target]];
    }

    let c = this.constraints;
    const meta: pb.IMeta = { args: [...args] };
    if (env.length) meta.env = env.map(([k, val]) => `${k}=${val}`);
    meta.cwd = cwd;
    if (v.user) meta.user = v.user;
    if (this.opts.proxyEnv) {
      const p = this.opts.proxyEnv;
      const pe: pb.IProxyEnv = {};
      if (p.httpProxy) pe.httpProxy = p.httpProxy;
      if (p.httpsProxy) pe.httpsProxy = p.httpsProxy;
      if (p.ftpProxy) pe.ftpProxy = p.ftpProxy;
      if (p.noProxy) pe.noProxy = p.noProxy;
      if (p.allProxy) pe.allProxy = p.allProxy;
      meta.proxyEnv = pe;
      c = addCaps(c, Caps.execMetaProxy);
    }
    if (v.extraHosts?.length) {
      meta.extraHosts = v.extraHosts.map((h) => ({ Host: h.host, IP: h.ip }));
      c = addCaps(c, Caps.execMetaExtraHosts);
    }
    if (v.hostname) meta.hostname = v.hostname;
    if (v.ulimits?.length) {
      meta.ulimit = v.ulimits.map((u) => {
        const ul: pb.IUlimit = { Name: u.name };
        if (u.soft) ul.Soft = u.soft;
        if (u.hard) ul.Hard = u.hard;
        return ul;
      });
      c = addCaps(c, Caps.execMetaUlimit);
    }
    if (v.cgroupParent) {
      meta.cgroupParent = v.cgroupParent;
      c = addCaps(c, Caps.execMetaCgroupParent);
    }
    meta.removeMountStubsRecursive = true;
    if (v.validExitCodes) {
      meta.validExitCodes = [...v.validExitCodes];
      c = addCaps(c, Caps.execValidExitCode);
    }

    const exec: pb.IExecOp = { meta };
    const network = v.network ?? pb.NetMode.UNSET;
    const security = v.security ?? pb.SecurityMode.SANDBOX;
    if (network !== pb.NetMode.UNSET) {
      exec.network = network;
      c = addCaps(c, Caps.execMetaNetwork);
    }
    if (security !== pb.SecurityMode.SANDBOX) {
      exec.security = security;
      c = addCaps(c, Caps.execMetaSecurity);
    }
    c = addCaps(c, Caps.execMetaBase);
    for (const m of this.mounts) {
      if (m.selector) c = addCaps(c, Caps.execMountSelector);
      if (m.cacheId) {
        c = addCaps(c, Caps.execMountCache, Caps.execMountCacheSharing);
      } else if (m.tmpfs) {
        c = addCaps(c, Caps.execMountTmpfs);
        if (m.tmpfsSize > 0) c = addCaps(c, Caps.execMountTmpfsSize);
      } else if (m.source) {
        c = addCaps(c, Caps.execMountBind);
      }
    }
    if (this.secrets.length > 0) {
      c = addCaps(c, Caps.execMountSecret);
      if (this.secrets.some((s) => s.env !== undefined)) c = addCaps(c, Caps.execSecretEnv);
    }
    if (ssh.length > 0) c = addCaps(c, Caps.execMountSSH);
    if (!c.platform && v.platform) c = { ...c, platform: v.platform };

    const { op, metadata } = marshalConstraints(ctx.constraints, c);
    const inputs: pb.IInput[] = [];
    const mounts: pb.IMount[] = [];
    let outIndex = 0;
    for (const m of this.mounts) {
      let inputIndex = EMPTY_INPUT;
      if (m.source) {
        if (m.tmpfs) throw buildError('tmpfs mounts must use scratch');
        const inp = m.source.toInput(ctx);
        inputIndex = inputs.findIndex((x) => inputsEqual(x, inp));
        if (inputIndex < 0) {
          inputIndex = inputs.length;
          inputs.push(inp);
        }
      }
      let outputIndex = SKIP_OUTPUT;
      if (producesOutput(m)) outputIndex = outIndex++;
      const pm: pb.IMount = {};
      if (inputIndex !== 0) pm.input = inputIndex;
      if (m.selector) pm.selector = m.selector;
      pm.dest = m.target;
      if (outputIndex !== 0) pm.output = outputIndex;
      if (m.readonly) pm.readonly = true;
      if (m.cacheId) {
        pm.mountType = pb.MountType.CACHE;
        const sharing = {
          shared: pb.CacheSharingOpt.SHARED,
          private: pb.CacheSharingOpt.PRIVATE,
          locked: pb.CacheSharingOpt.LOCKED,
        }[m.cacheSharing];
        pm.cacheOpt = sharing ? { ID: m.cacheId, sharing } : { ID: m.cacheId };
      }
      if (m.tmpfs) {
        pm.mountType = pb.MountType.TMPFS;
        pm.TmpfsOpt = m.tmpfsSize ? { size: m.tmpfsSize } : {};
      }
      if (m.contentCache !== pb.MountContentCache.DEFAULT) pm.contentCache = m.contentCache;
      mounts.push(pm);
    }
    const secretEnv: pb.ISecretEnv[] = [];
    for (const s of this.secrets) {
      if (s.env !== undefined) {
        const se: pb.ISecretEnv = { ID: s.id, name: s.env };
        if (s.optional) se.optional = true;
        secretEnv.push(se);
      }
      if (s.target !== undefined) {
        mounts.push({ dest: s.target, mountType: pb.MountType.SECRET, secretOpt: userOpt(s) });
      }
    }
    for (const s of ssh) {
      mounts.push({
        dest: s.target,
        mountType: pb.MountType.SSH,
        SSHOpt: userOpt({ ...s, id: s.id ?? '' }),
      });
    }
    exec.mounts = mounts;
    if (secretEnv.length) exec.secretenv = secretEnv;
    const full: pb.IOp = {};
    if (inputs.length) full.inputs = inputs;
    full.exec = exec;
    full.platform = op.platform!;
    full.constraints = op.constraints!;
    return finishOp(full, metadata);
  }
}

function userOpt(s: {
  id: string;
  uid?: number;
  gid?: number;
  mode?: number;
  optional?: boolean;
}): pb.ISecretOpt {
  const o: pb.ISecretOpt = {};
  if (s.id) o.ID = s.id;
  if (s.uid) o.uid = s.uid;
  if (s.gid) o.gid = s.gid;
  if (s.mode) o.mode = s.mode;
  if (s.optional) o.optional = true;
  return o;
}
