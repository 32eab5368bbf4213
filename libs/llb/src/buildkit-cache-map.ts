/**
 * BuildKit v0.11's cache map of an op (`solver/llbsolver/ops/*.go` `CacheMap`): the digest that
 * names the op in BuildKit's cache, and per input the selector digest under which it is linked.
 * Kiln's own keys (cache-key.ts, the scheduler's fast key) are made differently (from result
 * ids); these are computed beside them only to read and write BuildKit's cache format
 * (`application/vnd.buildkit.cacheconfig.v0`), whose record digests are `rootKey(digest, output)`.
 *
 * Covered: exec ops (`buildkit.exec.v0`: the Go JSON of `{Type, Exec, OS, Arch, Variant}` with
 * mount selectors, extra hosts' IPs and proxy env cleared), file ops (`buildkit.file.v0`), and
 * image sources pinned by digest (`buildkit.source.v0:` + the manifest key; the config key needs
 * the image's chain id, {@link imageConfigCacheDigest}). Other sources (local: BuildKit keys them
 * by session, never exported; git, http) and merge/diff/build have no BuildKit cache map here:
 * undefined, and nothing that depends on them is exported or matched.
 */
import { createHash } from 'node:crypto';
import { pb } from '@kiln/protocol';
import type { GoJson } from './go-json-pb.js';
import { messageToGoJson } from './go-json-pb.js';
import { goJsonString } from './go-json.js';

export interface BuildkitCacheMap {
  /** The op's cache map digests: one, or for an image source the manifest key's. */
  digest: string;
  /** Per input, in input order: BuildKit's selector digest ('' for none). */
  deps: { selector: string }[];
}

const sha = (b: string | Buffer): string =>
  `sha256:${createHash('sha256').update(b).digest('hex')}`;

const num = (v: number | { toNumber(): number } | null | undefined): number =>
  v == null ? 0 : typeof v === 'number' ? v : v.toNumber();

/** BuildKit's `rootKey`/`outputKey`: the id of a cache record, `sha256("<digest>@<output>")`. */
export function buildkitRecordDigest(dgst: string, output: number): string {
  return sha(`${dgst}@${output}`);
}

/** Go's encoding/json for the values this module writes (strings escaped as Go does). */
function goStringify(v: GoJson): string {
  if (v === null) return 'null';
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'number' || typeof v === 'boolean') return JSON.stringify(v);
  if (typeof v === 'string') return goJsonString(v);
  if (Array.isArray(v)) return `[${v.map(goStringify).join(',')}]`;
  return `{${Object.entries(v)
    .map(([k, x]) => `${goJsonString(k)}:${goStringify(x)}`)
    .join(',')}}`;
}

interface PlatformLike {
  OS?: string | null;
  Architecture?: string | null;
  Variant?: string | null;
}

function execCacheMap(op: pb.IOp, platform: PlatformLike): BuildkitCacheMap {
  const exec = pb.ExecOp.decode(pb.ExecOp.encode(op.exec!).finish());
  const n = (op.inputs ?? []).length;
  // getMountDeps: selectors per input, before they are cleared.
  const selectors: string[][] = Array.from({ length: n }, () => []);
  for (const m of exec.mounts ?? []) {
    const i = num(m.input);
    if (i < 0 || i >= n) continue;
    if (m.selector) selectors[i]!.push(joinRoot(m.selector));
  }
  for (const h of exec.meta?.extraHosts ?? []) h.IP = '';
  for (const m of exec.mounts ?? []) m.selector = '';
  if (exec.meta) exec.meta.proxyEnv = null;
  const ms = exec.mounts ?? [];
  const m0 = ms[0];
  // BuildKit's compatibility rule: a lone plain root mount is left out of the key.
  if (
    ms.length === 1 &&
    m0 &&
    m0.dest === '/' &&
    !m0.selector &&
    !m0.readonly &&
    num(m0.mountType) === 0 &&
    !m0.cacheOpt &&
    !m0.SSHOpt &&
    !m0.secretOpt &&
    !m0.resultID
  )
    exec.mounts = [];
  const fields: string[] = [
    `"Type":${goJsonString('buildkit.exec.v0')}`,
    `"Exec":${goStringify(messageToGoJson('pb.ExecOp', exec))}`,
    `"OS":${goJsonString(platform.OS ?? '')}`,
    `"Arch":${goJsonString(platform.Architecture ?? '')}`,
  ];
  if (platform.Variant) fields.push(`"Variant":${goJsonString(platform.Variant)}`);
  return {
    digest: sha(`{${fields.join(',')}}`),
    deps: selectors.map((s) => ({ selector: s.length ? sha(s.join('\0')) : '' })),
  };
}

/** Go's path.Join("/", p). */
function joinRoot(p: string): string {
  const out: string[] = [];
  for (const part of p.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') out.pop();
    else out.push(part);
  }
  return `/${out.join('/')}`;
}

function fileCacheMap(op: pb.IOp): BuildkitCacheMap {
  const n = (op.inputs ?? []).length;
  const selectors = new Map<number, string[]>();
  const invalid = new Set<number>();
  const add = (i: number, p: string): void => {
    selectors.set(i, [...(selectors.get(i) ?? []), p]);
  };
  const owner = (o: pb.IChownOpt | null | undefined): void => {
    const u = o?.user?.byName;
    if (u) add(num(u.input), '/etc/passwd');
    const g = o?.group?.byName;
    if (g) add(num(g.input), '/etc/group');
  };
  const actions: string[] = [];
  const indexes: number[][] = [];
  for (const a of op.file?.actions ?? []) {
    const input = num(a.input);
    const secondary = num(a.secondaryInput);
    if (input !== -1) invalid.add(input);
    let json: GoJson;
    if (a.mkdir) {
      owner(a.mkdir.owner);
      json = messageToGoJson('pb.FileActionMkDir', a.mkdir);
    } else if (a.mkfile) {
      owner(a.mkfile.owner);
      json = messageToGoJson('pb.FileActionMkFile', a.mkfile);
    } else if (a.rm) {
      json = messageToGoJson('pb.FileActionRm', a.rm);
    } else if (a.copy) {
      const c = pb.FileActionCopy.decode(pb.FileActionCopy.encode(a.copy).finish());
      owner(c.owner);
      if (secondary !== -1 && secondary < n) {
        add(secondary, c.src ?? '');
        c.src = posixBase(c.src ?? '');
      }
      json = messageToGoJson('pb.FileActionCopy', c);
    } else if (a.symlink) {
      json = messageToGoJson('pb.FileActionSymlink', a.symlink);
    } else json = null;
    actions.push(Buffer.from(goStringify(json)).toString('base64'));
    indexes.push([input, secondary, num(a.output)]);
  }
  const fields = [
    `"Type":${goJsonString('buildkit.file.v0')}`,
    `"Actions":${actions.length ? `[${actions.map((s) => `"${s}"`).join(',')}]` : 'null'}`,
  ];
  if (!isDefaultIndexes(indexes))
    fields.push(`"indexes":[${indexes.map((i) => `[${i.join(',')}]`).join(',')}]`);
  const deps = Array.from({ length: n }, (_, i) => {
    const s = selectors.get(i);
    return { selector: s && !invalid.has(i) ? sha(s.join('\0')) : '' };
  });
  return { digest: sha(`{${fields.join(',')}}`), deps };
}

/** Go's path.Base. */
function posixBase(p: string): string {
  if (p === '') return '.';
  const t = p.replace(/\/+$/, '');
  if (t === '') return '/';
  return t.slice(t.lastIndexOf('/') + 1);
}

/** BuildKit's isDefaultIndexes (its exact rule, quirks included): the pre-indexes key form. */
function isDefaultIndexes(idxs: number[][]): boolean {
  if (idxs.length === 0) return false;
  for (const [i, idx] of idxs.entries()) {
    if (idx.length !== 3) return false;
    if (i === 0 && idx[0] !== 0) return false;
    if (i !== 0 && idx[0] !== idxs.length + (i - 1)) return false;
    if (idx[1] !== -1 && idx[1] !== 1) return false;
    if (i === idxs.length - 1 && idx[2] !== 0) return false;
    if (i !== idxs.length - 1 && idx[2] !== -1) return false;
  }
  return true;
}

function sourceDigest(key: string): string {
  return sha(`buildkit.source.v0:${key}`);
}

/** The manifest key of an image source pinned by digest (BuildKit's `mainManifestKey`). */
function imageManifestCacheDigest(id: string, platform: PlatformLike): string | undefined {
  const m = /@(sha256:[a-f0-9]{64})$/.exec(id);
  if (!m) return undefined;
  const fields = [
    `"Digest":${goJsonString(m[1]!)}`,
    `"OS":${goJsonString(platform.OS ?? '')}`,
    `"Arch":${goJsonString(platform.Architecture ?? '')}`,
  ];
  if (platform.Variant) fields.push(`"Variant":${goJsonString(platform.Variant)}`);
  return sourceDigest(sha(`{${fields.join(',')}}`));
}

/**
 * An image source's second cache map digest: its config key, the chain id of its layers
 * (`cacheKeyFromConfig`), known once the image is resolved. Kiln's result id of an image is that
 * chain id.
 */
export function imageConfigCacheDigest(chainId: string): string {
  return sourceDigest(chainId);
}

/**
 * BuildKit's cache map of `op` run on `platform` (the op's own platform or the build's default),
 * or undefined when BuildKit's key cannot be made here (see the module comment).
 */
export function buildkitCacheMap(op: pb.IOp, platform: PlatformLike): BuildkitCacheMap | undefined {
  const p = op.platform ?? platform;
  if (op.exec) return execCacheMap(op, p);
  if (op.file) return fileCacheMap(op);
  const id = op.source?.identifier ?? '';
  if (id.startsWith('docker-image://')) {
    const digest = imageManifestCacheDigest(id, p);
    return digest ? { digest, deps: [] } : undefined;
  }
  return undefined;
}
