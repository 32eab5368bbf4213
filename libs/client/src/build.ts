/**
 * `client.build(options)`: a whole build in one call, as BuildKit's Go client `Solve` with its
 * `SolveOpt`. It invents the build id, opens the session (the context and other local
 * directories, secrets, ssh agents, registry credentials), solves, follows the progress as typed
 * events, writes every output where the options say (a `local` output as files in a directory,
 * tarballs to a file or a stream) and closes the session, whatever happened.
 *
 * Options are typed values, checked before anything reaches the farm: a bad platform, a secret
 * whose file is missing or variable unset, an output without a destination is a
 * `BUILD_OPTION_INVALID` error at once.
 */
import { randomUUID } from 'node:crypto';
import { constants } from 'node:fs';
import { access, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Writable } from 'node:stream';
import { settled } from '@kiln/common';
import { ENTITLEMENTS, formatPlatform, isKnownArchitecture, parsePlatform } from '@kiln/llb';
import type { Definition, Platform } from '@kiln/llb';
import { KilnError } from '@kiln/protocol';
import type { pb } from '@kiln/protocol';
import { contextPrefetch, dockerfileInput } from './dockerfile-input.js';
import type { KilnClient, SolveRequest } from './kiln-client.js';
import { cacheSolveOptions } from './local-cache.js';
import { atomicFileWriter, localDirWriter } from './outputs.js';
import { solveAndReceive } from './solve-and-receive.js';
import type { ProgressEvent } from './progress-event.js';
import type { SessionOptions } from './session.js';
import { StatusEvents } from './status-events.js';

/** An entitlement a build may ask for (`buildctl --allow`); the farm must also allow it. */
export type Entitlement = (typeof ENTITLEMENTS)[number];

/** Where a tarball goes: a file path, a stream, or a stream per platform (`os/arch`, or ''). */
export type Destination = string | Writable | ((platform: string) => Writable);

/**
 * An output of the build (BuildKit's exporters). In a multi-platform build `local`, `tar` and
 * `docker` give one artifact per platform: a path then gets a subdirectory (`local`) or a
 * `.<os>_<arch>` suffix per platform, as buildx does; `oci` gives one index over all of them.
 * A stream given as `dest` is ended once its artifact is written.
 */
export type Output =
  /** The result's files, written into the directory `dest`. */
  | { type: 'local'; dest: string }
  /** The result's files as one tar. */
  | { type: 'tar'; dest: Destination }
  /** An image tarball (OCI layout, or `docker load`'s format); `name`: its reference(s). */
  | { type: 'oci' | 'docker'; dest: Destination; name?: string | readonly string[] }
  /** An image pushed to a registry by the farm (buildx's `type=registry`). */
  | { type: 'registry'; name: string | readonly string[] };

/** Where a secret's value comes from (read only when a step asks for it). */
export type SecretSource = { value: string | Uint8Array } | { file: string } | { env: string };

/** `cacheFrom` entries (BuildKit's cache importers; see docs/cache.md). */
export type CacheImport =
  | { type: 'local'; src: string; tag?: string; digest?: string }
  | { type: 'registry'; ref: string }
  | ({ type: 's3'; bucket: string; region?: string; name?: string } & S3Options);

/** `cacheTo` entries (BuildKit's cache exporters); `mode: 'max'` keeps every step's result. */
export type CacheExport =
  | { type: 'local'; dest: string; tag?: string; mode?: 'min' | 'max' }
  | { type: 'registry'; ref: string; mode?: 'min' | 'max' }
  | { type: 'inline' }
  | ({
      type: 's3';
      bucket: string;
      region?: string;
      name?: string;
      mode?: 'min' | 'max';
    } & S3Options);

export interface S3Options {
  endpointUrl?: string;
  usePathStyle?: boolean;
  prefix?: string;
  accessKeyId?: string;
  secretAccessKey?: string;
  sessionToken?: string;
}

interface CommonBuildOptions {
  /** Outputs, in order (`exporterResponse` keys refer to their index). None: cache only. */
  outputs?: readonly Output[];
  /** Secrets by id (`RUN --mount=type=secret,id=ID`). */
  secrets?: Readonly<Record<string, SecretSource>>;
  /** ssh agent sockets by id (`RUN --mount=type=ssh`; `default` for an unnamed one). */
  ssh?: Readonly<Record<string, string>>;
  cacheFrom?: readonly CacheImport[];
  cacheTo?: readonly CacheExport[];
  entitlements?: readonly Entitlement[];
  /** The user's registry credentials by host (e.g. from the docker config); default anonymous. */
  registryAuth?: SessionOptions['registryAuth'];
  /** Every progress event, in order; the build fails with what this throws. */
  onProgress?: (e: ProgressEvent) => void;
  /** Aborting cancels the build (the call rejects with `CANCELED`). */
  signal?: AbortSignal;
  /** Where file digests of local directories persist between processes (see `SessionOptions`). */
  digestCacheDir?: string;
}

/** A Dockerfile build (the `dockerfile.v0` frontend, run by the farm). */
export interface DockerfileBuildOptions extends CommonBuildOptions {
  /** The build context directory (`local://context`). */
  context: string;
  /**
   * The Dockerfile: a path (default `<context>/Dockerfile`) or its text. Its ignore file is
   * `<Dockerfile>.dockerignore` beside it, else `<context>/.dockerignore`.
   */
  dockerfile?: string | { text: string | Uint8Array };
  target?: string;
  buildArgs?: Readonly<Record<string, string>>;
  /** Target platforms (`linux/arm64` or `{os, architecture}`); several give one image index. */
  platforms?: readonly (string | Platform)[];
  labels?: Readonly<Record<string, string>>;
  /** `true`: no step from the cache; a list of stage names: those stages only. */
  noCache?: boolean | readonly string[];
  /** Pull base images again even when the farm has them (`--pull`). */
  pull?: boolean;
  /** Extra `/etc/hosts` entries for RUN steps, host name to IP (`--add-host`). */
  addHosts?: Readonly<Record<string, string>>;
  /**
   * SLSA provenance attached to image outputs (`--provenance mode=...`, BuildKit's
   * `attest:provenance`), and Kiln's SBOM of the image's packages (`--sbom`).
   */
  attest?: { provenance?: 'min' | 'max'; sbom?: boolean };
}

/** A build of an LLB graph made with `@kiln/llb`. */
export interface DefinitionBuildOptions extends CommonBuildOptions {
  definition: Definition | pb.IDefinition;
  /**
   * The directories the graph's `local(name)` sources read, by name. A `local()` needs no
   * session id: it reads from the session of the build that runs it.
   */
  localDirs?: Readonly<Record<string, string>>;
}

export type BuildOptions = DockerfileBuildOptions | DefinitionBuildOptions;

export interface BuildResult {
  /** The id the build ran under (`status(buildId)`, the farm's logs). */
  buildId: string;
  /** What the build reported (`containerimage.digest`, `image.name`, `result.id`...). */
  exporterResponse: Record<string, string>;
}

const invalid = (message: string): KilnError => new KilnError('BUILD_OPTION_INVALID', message);

/** Runs `o` on `client`: see the file's comment. */
export async function runBuild(client: KilnClient, o: BuildOptions): Promise<BuildResult> {
  const plan = await compile(o);
  const buildId = randomUUID();
  // Aborted when the caller's signal is, or when onProgress throws: either ends the build.
  const abort = new AbortController();
  const onAbort = (): void => abort.abort();
  if (o.signal?.aborted) throw new KilnError('CANCELED', 'build canceled before it started');
  o.signal?.addEventListener('abort', onAbort, { once: true });
  let progressError: Error | undefined;
  const session = client.session({
    localDirs: plan.localDirs,
    secrets: plan.secret,
    ...(o.ssh ? { ssh: o.ssh } : {}),
    ...(o.registryAuth ? { registryAuth: o.registryAuth } : {}),
    onExport: plan.onExport,
    onCacheExport: plan.onCacheExport,
    ...(o.digestCacheDir ? { digestCacheDir: o.digestCacheDir } : {}),
    ...(plan.prefetch ? { prefetch: plan.prefetch } : {}),
  });
  const onProgress = o.onProgress;
  const status = onProgress
    ? (async () => {
        const events = new StatusEvents((e) => {
          if (progressError) return;
          try {
            onProgress(e);
          } catch (err) {
            progressError =
              err instanceof Error ? err : new KilnError('PROGRESS_FAILED', String(err));
            abort.abort();
          }
        });
        for await (const f of client.status(buildId, 0, { signal: abort.signal })) events.push(f);
      })()
    : undefined;
  // Its failure (say, the farm refused the caller) is the solve's to report: never unhandled.
  status?.catch(() => undefined);
  try {
    const res = await solveAndReceive(
      client,
      session,
      { ...plan.request, buildId, sessionId: session.id },
      {
        signal: abort.signal,
        onError: async (err) => {
          if (progressError) throw progressError;
          if (o.signal?.aborted) throw new KilnError('CANCELED', 'build canceled', { cause: err });
          // The status stream ends with the build: its last frames name the failed step.
          if (status) await settled(status, 2_000);
          throw err;
        },
      },
    );
    await status?.catch(() => undefined);
    if (progressError) throw progressError;
    return { buildId, exporterResponse: res.exporterResponse };
  } finally {
    abort.abort();
    o.signal?.removeEventListener('abort', onAbort);
    session.close();
    await session.cacheSaved();
  }
}

/** A solve request but its build id (distributed over the union: definition or frontend). */
type Request = SolveRequest extends infer R
  ? R extends unknown
    ? Omit<R, 'buildId'>
    : never
  : never;

interface Plan {
  request: Request;
  localDirs: Record<string, string>;
  secret: (id: string) => Promise<Uint8Array | undefined>;
  onExport: (index: number, platform: string) => Writable;
  onCacheExport: (index: number) => Writable;
  /** Listings the farm will ask for, walked ahead (see SessionOptions.prefetch). */
  prefetch?: SessionOptions['prefetch'];
}

/** The options checked and turned into a solve request and a session's providers. */
async function compile(o: BuildOptions): Promise<Plan> {
  const outputs = o.outputs ?? [];
  const cacheImports = (o.cacheFrom ?? []).map(cacheImportEntry);
  const cacheExports = (o.cacheTo ?? []).map(cacheExportEntry);
  const cache = cacheSolveOptions(cacheImports, cacheExports);
  for (const e of o.entitlements ?? [])
    if (!(ENTITLEMENTS as readonly string[]).includes(e))
      throw invalid(`entitlement ${JSON.stringify(e)}: want ${ENTITLEMENTS.join(' or ')}`);
  const secret = await secretProvider(o.secrets ?? {});
  const common = {
    exporters: outputs.map(exporterEntry),
    cacheImports,
    cacheExports,
    entitlements: [...new Set(o.entitlements ?? [])],
  };
  const plan = {
    secret,
    onExport: exportOpener(outputs),
    onCacheExport: cache.onCacheExport,
  };
  if ('definition' in o) {
    for (const name of Object.keys(o.localDirs ?? {}))
      if (name in cache.localDirs) throw invalid(`local directory name ${name} is reserved`);
    return {
      ...plan,
      request: { ...common, definition: o.definition },
      localDirs: { ...resolveAll(o.localDirs ?? {}), ...cache.localDirs },
    };
  }
  if ((o.platforms?.length ?? 0) > 1)
    for (const [i, out] of outputs.entries())
      if ((out.type === 'tar' || out.type === 'docker') && isStream(out.dest))
        throw invalid(
          `output ${i} (${out.type}): ${o.platforms!.length} platforms give one artifact each, which cannot go to one stream; give dest as (platform) => Writable or a path`,
        );
  const context = resolve(o.context);
  const df = o.dockerfile ?? join(context, 'Dockerfile');
  const text =
    typeof df === 'string'
      ? await readFile(df).catch((cause: unknown) => {
          throw new KilnError(
            'BUILD_OPTION_INVALID',
            `cannot read the Dockerfile ${df}: ${(cause as NodeJS.ErrnoException).code ?? String(cause)}`,
            { cause },
          );
        })
      : df.text;
  // <Dockerfile>.dockerignore beside the Dockerfile wins over <context>/.dockerignore.
  const dockerignore =
    (typeof df === 'string'
      ? await readFile(`${df}.dockerignore`).catch(() => undefined)
      : undefined) ?? (await readFile(join(context, '.dockerignore')).catch(() => undefined));
  return {
    ...plan,
    request: {
      ...common,
      frontend: 'dockerfile.v0',
      attrs: dockerfileAttrs(o),
      inputs: { dockerfile: dockerfileInput(text, dockerignore ? { dockerignore } : {}) },
    },
    localDirs: { context, ...cache.localDirs },
    // Walked while the frontend runs.
    prefetch: contextPrefetch(dockerignore),
  };
}

function resolveAll(dirs: Readonly<Record<string, string>>): Record<string, string> {
  return Object.fromEntries(Object.entries(dirs).map(([k, v]) => [k, resolve(v)]));
}

/** The frontend's attributes (BuildKit's names: `build-arg:K`, `platform`, `label:K`...). */
function dockerfileAttrs(o: DockerfileBuildOptions): Record<string, string> {
  const attrs: Record<string, string> = {};
  for (const [k, v] of Object.entries(o.buildArgs ?? {})) attrs[`build-arg:${k}`] = v;
  for (const [k, v] of Object.entries(o.labels ?? {})) attrs[`label:${k}`] = v;
  if (o.target) attrs.target = o.target;
  if (o.platforms?.length) attrs.platform = o.platforms.map(platformString).join(',');
  if (o.noCache === true) attrs['no-cache'] = '';
  else if (Array.isArray(o.noCache) && o.noCache.length > 0)
    attrs['no-cache'] = o.noCache.join(',');
  if (o.pull) attrs['image-resolve-mode'] = 'pull';
  const hosts = Object.entries(o.addHosts ?? {});
  if (hosts.length > 0) attrs['add-hosts'] = hosts.map(([h, ip]) => `${h}=${ip}`).join(',');
  const p = o.attest?.provenance;
  if (p !== undefined) {
    if (p !== 'min' && p !== 'max')
      throw invalid(`attest.provenance ${JSON.stringify(p)}: want min or max`);
    attrs['attest:provenance'] = `type=provenance,mode=${p}`;
  }
  if (o.attest?.sbom) attrs['attest:sbom'] = 'type=sbom';
  return attrs;
}

/** A platform as `os/arch[/variant]`, checked: an unknown architecture is an error now. */
function platformString(p: string | Platform): string {
  let parsed: Platform;
  try {
    parsed = typeof p === 'string' ? parsePlatform(p) : p;
  } catch (cause) {
    throw new KilnError(
      'BUILD_OPTION_INVALID',
      `platform ${typeof p === 'string' ? p : JSON.stringify(p)}: ${String(cause)}`,
      {
        cause,
      },
    );
  }
  if (!isKnownArchitecture(parsed))
    throw invalid(
      `platform ${formatPlatform(parsed)}: unknown architecture ${JSON.stringify(parsed.architecture)}`,
    );
  return formatPlatform(parsed);
}

/**
 * The secrets' provider, each source checked now (a missing file or unset variable is the
 * caller's error before the build, as buildx does) and read only when a step asks.
 */
async function secretProvider(
  secrets: Readonly<Record<string, SecretSource>>,
): Promise<(id: string) => Promise<Uint8Array | undefined>> {
  for (const [id, s] of Object.entries(secrets)) {
    if ('file' in s)
      await access(s.file, constants.R_OK).catch((cause: unknown) => {
        throw new KilnError(
          'BUILD_OPTION_INVALID',
          `secret ${id}: cannot read ${s.file}: ${(cause as NodeJS.ErrnoException).code ?? String(cause)}`,
          { cause },
        );
      });
    else if ('env' in s && process.env[s.env] === undefined)
      throw invalid(`secret ${id}: environment variable ${s.env} is not set`);
  }
  return async (id) => {
    const s = Object.hasOwn(secrets, id) ? secrets[id] : undefined;
    if (!s) return undefined;
    if ('value' in s) return typeof s.value === 'string' ? Buffer.from(s.value) : s.value;
    if ('file' in s) return readFile(s.file);
    const v = process.env[s.env];
    return v === undefined ? undefined : Buffer.from(v);
  };
}

const names = (n: string | readonly string[] | undefined): string =>
  typeof n === 'string' ? n : (n ?? []).join(',');

function exporterEntry(out: Output): { type: string; attrs: Record<string, string> } {
  switch (out.type) {
    case 'registry':
      if (!names(out.name)) throw invalid('a registry output needs a name');
      return { type: 'image', attrs: { name: names(out.name), push: 'true' } };
    case 'oci':
    case 'docker':
      return { type: out.type, attrs: out.name ? { name: names(out.name) } : {} };
    case 'local':
    case 'tar':
      if (!out.dest) throw invalid(`a ${out.type} output needs a dest`);
      return { type: out.type, attrs: {} };
    default:
      throw invalid(`output type ${JSON.stringify((out as { type: unknown }).type)} is unknown`);
  }
}

const isStream = (d: Destination): d is Writable => typeof d === 'object';

/** Where each output's artifacts go, by the output's index and the artifact's platform. */
function exportOpener(outputs: readonly Output[]): (index: number, platform: string) => Writable {
  const used = new Set<number>();
  return (index, platform) => {
    const out = outputs[index];
    if (!out || out.type === 'registry')
      throw new KilnError('EXPORT_UNEXPECTED', `output ${index} writes nothing here`);
    const suffix = platform.replace(/\//g, '_');
    if (out.type === 'local') return localDirWriter(suffix ? join(out.dest, suffix) : out.dest);
    const dest = out.dest;
    if (typeof dest === 'string') return atomicFileWriter(suffix ? `${dest}.${suffix}` : dest);
    if (typeof dest === 'function') return dest(platform);
    if (used.has(index))
      throw invalid(
        `output ${index} (${out.type}): several platforms cannot go to one stream; give dest as (platform) => Writable or a path`,
      );
    used.add(index);
    return dest;
  };
}

function cacheImportEntry(c: CacheImport): { type: string; attrs: Record<string, string> } {
  switch (c.type) {
    case 'local':
      return { type: 'local', attrs: defined({ src: c.src, tag: c.tag, digest: c.digest }) };
    case 'registry':
      return { type: 'registry', attrs: { ref: c.ref } };
    case 's3':
      return { type: 's3', attrs: s3Attrs(c) };
    default:
      throw invalid(`cache import type ${JSON.stringify((c as { type: unknown }).type)}`);
  }
}

function cacheExportEntry(c: CacheExport): { type: string; attrs: Record<string, string> } {
  switch (c.type) {
    case 'local':
      return { type: 'local', attrs: defined({ dest: c.dest, tag: c.tag, mode: c.mode }) };
    case 'registry':
      return { type: 'registry', attrs: defined({ ref: c.ref, mode: c.mode }) };
    case 'inline':
      return { type: 'inline', attrs: {} };
    case 's3':
      return { type: 's3', attrs: { ...s3Attrs(c), ...defined({ mode: c.mode }) } };
    default:
      throw invalid(`cache export type ${JSON.stringify((c as { type: unknown }).type)}`);
  }
}

function s3Attrs(
  c: { bucket: string; region?: string; name?: string } & S3Options,
): Record<string, string> {
  if (!c.bucket) throw invalid('an s3 cache needs a bucket');
  return defined({
    bucket: c.bucket,
    region: c.region,
    name: c.name,
    endpoint_url: c.endpointUrl,
    use_path_style: c.usePathStyle === undefined ? undefined : String(c.usePathStyle),
    prefix: c.prefix,
    access_key_id: c.accessKeyId,
    secret_access_key: c.secretAccessKey,
    session_token: c.sessionToken,
  });
}

function defined(o: Record<string, string | undefined>): Record<string, string> {
  return Object.fromEntries(
    Object.entries(o).filter((e): e is [string, string] => e[1] !== undefined),
  );
}
