/**
 * `RUN --mount` to LLB mounts, secrets and ssh sockets (BuildKit's convert_runmount.go,
 * convert_secrets.go, convert_ssh.go). Secrets and ssh sockets become exec secret/ssh mounts:
 * their values never appear in args, env or the image config.
 */
import { posix } from 'node:path';
import { mkdir, scratch } from '@kiln/llb';
import type { MountSpec, SSHSpec, SecretSpec, State } from '@kiln/llb';
import type { Mount } from '../instructions/runmount.js';
import type { EnvGetter } from '../shell/env.js';
import type { DispatchOpt } from './common.js';
import { joinRoot } from './common.js';
import type { DispatchState } from './dispatch-state.js';

export interface RunMounts {
  mounts: MountSpec[];
  secrets: SecretSpec[];
  ssh: SSHSpec[];
}

/** A cache mount with uid/gid/mode starts from a directory made with those (setCacheUIDGIDFileOp). */
function setCacheUIDGID(m: Mount, st: State): State {
  return st.file(
    mkdir('/cache', m.mode ?? 0o755, { chown: { user: m.uid ?? 0, group: m.gid ?? 0 } }),
    {
      customName: '[internal] settings cache mount permissions',
    },
  );
}

function dispatchSecret(m: Mount): SecretSpec {
  const targetPath = m.target;
  let id = m.cacheId;
  if (m.source !== '') id = m.source;
  if (id === '') {
    if (targetPath === '') throw new Error('one of source, target required');
    id = posix.basename(targetPath);
  }
  let target: string | undefined = targetPath !== '' ? targetPath : undefined;
  if (m.env === undefined)
    target = targetPath !== '' ? targetPath : '/run/secrets/' + posix.basename(id);
  const spec: SecretSpec = { id };
  if (target !== undefined) spec.target = target;
  if (m.env !== undefined) spec.env = m.env;
  if (!m.required) spec.optional = true;
  if (m.uid !== undefined || m.gid !== undefined || m.mode !== undefined) {
    spec.uid = m.uid ?? 0;
    spec.gid = m.gid ?? 0;
    spec.mode = m.mode ?? 0o400;
  }
  return spec;
}

function dispatchSSH(m: Mount): SSHSpec {
  if (m.source !== '') throw new Error('ssh does not support source');
  const spec: SSHSpec = { id: m.cacheId };
  if (m.target !== '') spec.target = m.target;
  if (!m.required) spec.optional = true;
  if (m.uid !== undefined || m.gid !== undefined || m.mode !== undefined) {
    spec.uid = m.uid ?? 0;
    spec.gid = m.gid ?? 0;
    spec.mode = m.mode ?? 0o600;
  }
  return spec;
}

/**
 * The mounts of a RUN. `mounts` are the expanded mounts; `sources[i]` is the stage or image of
 * mount i's `from`.
 */
export function dispatchRunMounts(
  d: DispatchState,
  mounts: readonly Mount[],
  sources: readonly (DispatchState | undefined)[],
  opt: DispatchOpt,
): RunMounts {
  const out: RunMounts = { mounts: [], secrets: [], ssh: [] };
  mounts.forEach((mount, i) => {
    let st: State = opt.buildContext;
    const source = sources[i];
    if (mount.from !== '') {
      if (!source)
        throw new Error(`mount from ${JSON.stringify(mount.from)} could not be resolved`);
      st = source.state;
    } else if (mount.type === 'cache') {
      // A cache mount without from= starts empty.
      st = scratch();
    }
    if (mount.type === 'secret') {
      out.secrets.push(dispatchSecret(mount));
      return;
    }
    if (mount.type === 'ssh') {
      out.ssh.push(dispatchSSH(mount));
      return;
    }
    const spec: Omit<MountSpec, 'target' | 'source'> = {};
    if (mount.type === 'tmpfs') {
      st = scratch();
      spec.tmpfs = mount.sizeLimit > 0 ? { size: mount.sizeLimit } : {};
    }
    if (mount.readOnly) spec.readonly = true;
    else if (mount.type === 'bind') spec.noOutput = true;
    if (mount.type === 'cache') {
      const id =
        mount.cacheId !== ''
          ? mount.cacheId
          : posix.normalize(mount.target).replace(/(.)\/$/, '$1');
      spec.cache = { id: `${opt.cacheIdNamespace}/${id}`, sharing: mount.cacheSharing || 'shared' };
    }
    let target = mount.target;
    if (!posix.isAbsolute(posix.normalize(target || '.')))
      target = posix.join('/', d.state.getDir(), target);
    if (joinRoot(target) === '/') throw new Error(`invalid mount target ${JSON.stringify(target)}`);
    const src = joinRoot(mount.source);
    if (src !== '/') spec.selector = src;
    else if (mount.uid !== undefined || mount.gid !== undefined || mount.mode !== undefined) {
      st = setCacheUIDGID(mount, st);
      spec.selector = '/cache';
    }
    out.mounts.push({ target, source: st, ...spec });
    // A cache mount without from= reads scratch (BuildKit sets from=scratch), not the context.
    if (mount.from === '' && mount.type !== 'cache') d.ctxPaths.add(joinRoot(mount.source));
    else if (source) source.paths.add(joinRoot(mount.source));
  });
  return out;
}

/** The environment with secret env values masked, for step names (withSecretEnvMask). */
export function withSecretEnvMask(mounts: readonly Mount[], env: EnvGetter): EnvGetter {
  const masked = new Map<string, string>();
  for (const m of mounts) if (m.type === 'secret' && m.env !== undefined) masked.set(m.env, '****');
  if (masked.size === 0) return env;
  return {
    get: (k) => masked.get(k) ?? env.get(k),
    keys: () => [...env.keys().filter((k) => !masked.has(k)), ...masked.keys()],
  };
}
