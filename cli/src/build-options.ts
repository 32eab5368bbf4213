/**
 * Parsing of `kiln build` flags in docker buildx's syntax: `--secret id=X,src=FILE|env=VAR`,
 * `--ssh default[=SOCK]`, `--output type=local,dest=DIR`, `--build-arg K[=V]`.
 */
import { constants } from 'node:fs';
import { access, readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { ConnectOptions } from '@kiln/client';
import { ENTITLEMENTS, isEntitlement } from '@kiln/llb';
import { KilnError } from '@kiln/protocol/errors';

export class BuildOptionError extends KilnError {
  constructor(message: string) {
    super('BUILD_OPTION_INVALID', message);
  }
}

/** `a=b,c=d` (csv; a value may be quoted) into a map; bare words map to ''. */
export function parseCsvKv(s: string, flag: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const field of s.split(',')) {
    if (field === '') continue;
    const i = field.indexOf('=');
    const k = (i < 0 ? field : field.slice(0, i)).trim().toLowerCase();
    let v = i < 0 ? '' : field.slice(i + 1);
    if (/^".*"$/.test(v)) v = v.slice(1, -1);
    if (!k) throw new BuildOptionError(`${flag} ${JSON.stringify(s)}: empty key`);
    out.set(k, v);
  }
  return out;
}

export interface SecretSource {
  id: string;
  read(): Promise<Uint8Array>;
  /** Fails now, as buildx does, when the file cannot be read or the variable is unset. */
  check(): Promise<void>;
}

export function parseSecret(s: string, env: NodeJS.ProcessEnv): SecretSource {
  const kv = parseCsvKv(s, '--secret');
  const id = kv.get('id');
  if (!id) throw new BuildOptionError(`--secret ${JSON.stringify(s)}: id= is required`);
  const type = kv.get('type');
  const src = kv.get('src') ?? kv.get('source');
  const envName = kv.get('env');
  if (type === 'env' || (envName !== undefined && src === undefined)) {
    const name = envName ?? src ?? id;
    const read = (): Promise<Uint8Array> => {
      const v = env[name];
      if (v === undefined)
        return Promise.reject(
          new BuildOptionError(`--secret id=${id}: environment variable ${name} is not set`),
        );
      return Promise.resolve(Buffer.from(v));
    };
    return { id, read, check: () => read().then(() => undefined) };
  }
  const file = src ?? id;
  const failed = (cause: unknown): never => {
    throw new BuildOptionError(
      `--secret id=${id}: cannot read ${file}: ${(cause as NodeJS.ErrnoException).code ?? String(cause)}`,
    );
  };
  return {
    id,
    read: () => readFile(file).catch(failed),
    check: () => access(file, constants.R_OK).catch(failed),
  };
}

export interface SshSource {
  id: string;
  socket: string;
}

export function parseSsh(s: string, env: NodeJS.ProcessEnv): SshSource {
  const [id, rest] = s.includes('=')
    ? [s.slice(0, s.indexOf('=')), s.slice(s.indexOf('=') + 1)]
    : [s, ''];
  if (!id)
    throw new BuildOptionError(`--ssh ${JSON.stringify(s)}: an id is required (e.g. default)`);
  const socket = rest || env.SSH_AUTH_SOCK;
  if (!socket)
    throw new BuildOptionError(`--ssh ${id}: no socket given and SSH_AUTH_SOCK is not set`);
  if (socket.includes(','))
    throw new BuildOptionError(`--ssh ${id}: only one agent socket is supported, not key files`);
  return { id, socket };
}

/** BuildKit's image exporter options Kiln passes on (`rewrite-timestamp`, `source-date-epoch`). */
export interface ImageOutputOptions {
  name?: string;
  attrs?: Record<string, string>;
}

export type OutputSpec =
  | { type: 'local'; dest: string }
  | { type: 'tar'; dest: string }
  | ({ type: 'oci' | 'docker'; dest: string } & ImageOutputOptions)
  /** Pushed to a registry (`type=image,push=true` or `type=registry`); no file. */
  | ({ type: 'image' } & ImageOutputOptions);

const IMAGE_OUTPUT_ATTRS = ['rewrite-timestamp', 'source-date-epoch'];

function imageOutputOptions(kv: Map<string, string>): ImageOutputOptions {
  const name = kv.get('name');
  const attrs = Object.fromEntries(
    IMAGE_OUTPUT_ATTRS.flatMap((k) => (kv.has(k) ? [[k, kv.get(k)!]] : [])),
  );
  return { ...(name ? { name } : {}), ...(Object.keys(attrs).length ? { attrs } : {}) };
}

export function parseOutput(s: string): OutputSpec {
  // `--output DIR` is short for type=local,dest=DIR, as in buildx; `-` is a tar on stdout there.
  if (s === '-') return { type: 'tar', dest: '-' };
  if (!s.includes('=')) return { type: 'local', dest: s };
  const kv = parseCsvKv(s, '--output');
  const type = kv.get('type') ?? 'local';
  if (type === 'registry' || type === 'image') {
    if (type === 'image' && kv.get('push') !== 'true')
      throw new BuildOptionError(
        `--output ${JSON.stringify(s)}: there is no local image store; add push=true (or use type=registry), or type=oci`,
      );
    return { type: 'image', ...imageOutputOptions(kv) };
  }
  const dest = kv.get('dest');
  if (!dest) throw new BuildOptionError(`--output ${JSON.stringify(s)}: dest= is required`);
  if (type === 'local' || type === 'tar') return { type, dest };
  if (type === 'oci' || type === 'docker') return { type, dest, ...imageOutputOptions(kv) };
  throw new BuildOptionError(
    `--output type=${type} is not supported (local, tar, oci, docker, image, registry)`,
  );
}

export interface CacheSpec {
  type: string;
  attrs: Record<string, string>;
}

const CACHE_TYPES = ['local', 'registry', 'inline', 's3'];

/**
 * `--cache-from` / `--cache-to` in buildx's syntax: `type=local,src=DIR` / `type=local,dest=DIR`,
 * `type=registry,ref=REF,mode=max`, `type=inline`, `type=s3,bucket=B,region=R,...`; a value with
 * no `=` is a registry reference. As buildx, an s3 cache without credentials gets the client's
 * `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
 */
export function parseCacheSpec(
  s: string,
  flag: '--cache-from' | '--cache-to',
  env: NodeJS.ProcessEnv = {},
): CacheSpec {
  if (!s.includes('=')) return { type: 'registry', attrs: { ref: s } };
  const kv = parseCsvKv(s, flag);
  const type = kv.get('type') ?? (kv.has('ref') ? 'registry' : '');
  if (!CACHE_TYPES.includes(type))
    throw new BuildOptionError(
      `${flag} ${JSON.stringify(s)}: type= must be one of ${CACHE_TYPES.join(', ')}`,
    );
  kv.delete('type');
  const attrs = Object.fromEntries(kv);
  const need =
    type === 'local' ? (flag === '--cache-to' ? 'dest' : 'src') : type === 'registry' ? 'ref' : '';
  if (need && !attrs[need])
    throw new BuildOptionError(`${flag} ${JSON.stringify(s)}: ${need}= is required`);
  if (type === 'inline' && flag === '--cache-from')
    throw new BuildOptionError(
      `--cache-from type=inline: import an inline cache with the image's reference (type=registry,ref=IMAGE)`,
    );
  if (type === 's3') {
    if (!attrs.bucket)
      throw new BuildOptionError(`${flag} ${JSON.stringify(s)}: bucket= is required`);
    if (attrs.access_key_id === undefined && env.AWS_ACCESS_KEY_ID) {
      attrs.access_key_id = env.AWS_ACCESS_KEY_ID;
      attrs.secret_access_key = env.AWS_SECRET_ACCESS_KEY ?? '';
      if (env.AWS_SESSION_TOKEN) attrs.session_token = env.AWS_SESSION_TOKEN;
    }
  }
  return { type, attrs };
}

/** `K=V`, or `K` alone to take the value from the environment (skipped when unset), as docker does. */
export function parseBuildArg(s: string, env: NodeJS.ProcessEnv): [string, string] | undefined {
  const i = s.indexOf('=');
  if (i === 0) throw new BuildOptionError(`--build-arg ${JSON.stringify(s)}: empty name`);
  if (i > 0) return [s.slice(0, i), s.slice(i + 1)];
  const v = env[s];
  return v === undefined ? undefined : [s, v];
}

/** What `--build-context` values add to a Solve: frontend attributes and session directories. */
export interface NamedContexts {
  attrs: Record<string, string>;
  localDirs: Record<string, string>;
}

/**
 * `--build-context NAME=VALUE` as buildx: `docker-image://REF`, a git or http(s) URL (fetched by
 * the farm) go to the frontend as `context:NAME`; anything else is a local directory served by
 * the session under NAME (`_context`, `_dockerfile` for those two names) as `local:NAME`.
 */
export function parseBuildContexts(values: readonly string[]): NamedContexts {
  const out: NamedContexts = { attrs: {}, localDirs: {} };
  for (const v of values) {
    const i = v.indexOf('=');
    if (i <= 0 || i === v.length - 1)
      throw new BuildOptionError(`--build-context ${JSON.stringify(v)}: want NAME=VALUE`);
    const name = v.slice(0, i);
    const value = v.slice(i + 1);
    if (`context:${name}` in out.attrs)
      throw new BuildOptionError(`--build-context ${name}: given twice`);
    if (value.startsWith('oci-layout://'))
      throw new BuildOptionError(
        `--build-context ${name}=oci-layout://...: not supported (the farm cannot read an OCI layout on this machine); push the image to a registry and use docker-image://REF`,
      );
    if (/^(docker-image:\/\/|https?:\/\/|git:\/\/|ssh:\/\/|git@)/.test(value)) {
      out.attrs[`context:${name}`] = value;
      continue;
    }
    const local = name === 'context' || name === 'dockerfile' ? `_${name}` : name;
    out.attrs[`context:${name}`] = `local:${local}`;
    out.localDirs[local] = resolve(value);
  }
  return out;
}

/** docker's memory sizes (`64m`, `1g`, `1024`, `2GiB`): bytes, binary units. */
export function parseMemBytes(v: string): number {
  const m = /^([0-9]+(?:\.[0-9]+)?) ?([kmgtp])?i?b?$/i.exec(v);
  const bytes = m
    ? Math.floor(Number(m[1]) * 1024 ** ' kmgtp'.indexOf((m[2] ?? ' ').toLowerCase()))
    : NaN;
  if (!Number.isSafeInteger(bytes) || bytes <= 0)
    throw new BuildOptionError(`--shm-size ${JSON.stringify(v)}: want a size such as 64m or 1g`);
  return bytes;
}

/**
 * `--annotation [TYPE[,TYPE...]][[PLATFORM]]:KEY=VALUE` (buildx) as image exporter attributes:
 * no type is the manifest's (`annotation.KEY`), else `annotation-TYPE[PLATFORM].KEY` for each of
 * `manifest`, `index`.
 */
export function parseAnnotations(values: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const v of values) {
    const m = /^(?:([a-z,-]*)(\[[^\]]+\])?:)?([^=:]+)=(.*)$/s.exec(v);
    if (!m)
      throw new BuildOptionError(
        `--annotation ${JSON.stringify(v)}: want [TYPE[,TYPE]][[PLATFORM]]:KEY=VALUE`,
      );
    const [, types, platform = '', key = '', value = ''] = m;
    for (const t of types ? types.split(',') : ['']) {
      if (t !== '' && t !== 'manifest' && t !== 'index')
        throw new BuildOptionError(
          `--annotation ${JSON.stringify(v)}: type ${t}: want manifest or index (descriptor annotations are not supported)`,
        );
      if (t === 'index' && platform)
        throw new BuildOptionError(`--annotation ${JSON.stringify(v)}: an index takes no platform`);
      out[`annotation${t ? `-${t}` : ''}${platform}.${key}`] = value;
    }
  }
  return out;
}

/** `--allow` values: BuildKit's entitlement names, each once. */
export function parseAllow(values: readonly string[]): string[] {
  for (const v of values)
    if (!isEntitlement(v))
      throw new BuildOptionError(`--allow ${v}: want ${ENTITLEMENTS.join(' or ')}`);
  return [...new Set(values)];
}

async function readOption(flag: string, file: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (cause) {
    throw new BuildOptionError(
      `${flag} ${file}: ${(cause as NodeJS.ErrnoException).code ?? String(cause)}`,
    );
  }
}

/**
 * TLS files and the token for a remote farm: `--tls` (the system's CAs), `--tlscacert`,
 * `--tlscert/--tlskey`, and `--token`,
 * else `--token-file`, else `KILN_TOKEN`, else `KILN_TOKEN_FILE`.
 */
export interface RemoteFlags {
  tls?: boolean;
  tlscacert?: string;
  tlscert?: string;
  tlskey?: string;
  token?: string;
  tokenFile?: string;
}

export async function remoteConnectOptions(
  f: RemoteFlags,
  env: NodeJS.ProcessEnv,
): Promise<Pick<ConnectOptions, 'tls' | 'token'>> {
  if (!f.tlscert !== !f.tlskey) throw new BuildOptionError('--tlscert and --tlskey go together');
  const out: Pick<ConnectOptions, 'tls' | 'token'> = {};
  if (f.tls || f.tlscacert || f.tlscert) {
    const tls: NonNullable<ConnectOptions['tls']> = {};
    if (f.tlscacert) tls.ca = await readOption('--tlscacert', f.tlscacert);
    if (f.tlscert && f.tlskey) {
      tls.cert = await readOption('--tlscert', f.tlscert);
      tls.key = await readOption('--tlskey', f.tlskey);
    }
    out.tls = tls;
  }
  const tokenFile = f.tokenFile ?? (f.token || env.KILN_TOKEN ? undefined : env.KILN_TOKEN_FILE);
  const token =
    f.token ??
    (tokenFile
      ? (await readOption('--token-file', tokenFile)).toString('utf8').trim()
      : env.KILN_TOKEN);
  if (token) out.token = token;
  return out;
}

/**
 * buildx's `--attest`, `--provenance` and `--sbom` as the frontend attributes `attest:TYPE` (the
 * whole csv, as buildx sends it); `false` or `disabled=true` sends none. `--provenance=true`
 * is `type=provenance` (BuildKit's default mode, max); `--provenance=mode=min` adds the mode.
 */
export function attestAttrs(
  attest: readonly string[],
  provenance: string | undefined,
  sbom: string | undefined,
): Record<string, string> {
  const canonical = (type: string, v: string | undefined): string[] => {
    if (v === undefined || v === '') return [];
    if (/^(true|1)$/i.test(v)) return [`type=${type}`];
    if (/^(false|0)$/i.test(v)) return [`type=${type},disabled=true`];
    return [`type=${type},${v}`];
  };
  const out: Record<string, string> = {};
  const seen = new Set<string>();
  for (const a of [...attest, ...canonical('provenance', provenance), ...canonical('sbom', sbom)]) {
    const kv = parseCsvKv(a, '--attest');
    const type = kv.get('type');
    if (!type) throw new BuildOptionError(`--attest ${JSON.stringify(a)}: type= is required`);
    if (type !== 'provenance' && type !== 'sbom')
      throw new BuildOptionError(`--attest ${JSON.stringify(a)}: type must be provenance or sbom`);
    if (seen.has(type)) throw new BuildOptionError(`duplicate attestation field ${type}`);
    seen.add(type);
    if (kv.get('disabled') !== 'true') out[`attest:${type}`] = a;
  }
  return out;
}
