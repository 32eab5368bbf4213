/**
 * The implementation of `kiln build` (see build.ts): the Dockerfile goes to a scheduler (remote, or
 * the local farm, see farm/local.ts) with a session serving the context, secrets and ssh agents; the
 * progress comes from the build's status stream; exporters' artifacts come back over the session.
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import {
  StatusEvents,
  atomicFileWriter,
  cacheSolveOptions,
  contextPrefetch,
  dockerfileInput,
  localDirWriter,
  solveAndReceive,
} from '@kiln/client';
import { createPrinter } from '@kiln/client/progress';
import { settled } from '@kiln/common';
// @kiln/llb is loaded by the client library anyway; the Dockerfile frontend only for an error.
import { isKnownArchitecture, parsePlatform } from '@kiln/llb';
import type { CredentialsProvider } from '@kiln/registry';
import { KilnError, reviveError } from '@kiln/protocol/errors';
import {
  BuildOptionError,
  parseAllow,
  parseAnnotations,
  parseBuildArg,
  parseBuildContexts,
  parseCacheSpec,
  parseMemBytes,
  parseOutput,
  attestAttrs,
  parseSecret,
  parseSsh,
  remoteConnectOptions,
} from '../build-options.js';
import type { OutputSpec, RemoteFlags } from '../build-options.js';
import { idleTimeout } from '../farm/idle.js';
import { localFarm, remoteFarm } from '../farm/local.js';
import { buildContext } from '../context-source.js';
import type { BuildContext } from '../context-source.js';
import { FormattedError } from '../formatted-error.js';
import { defaultStateDir } from '../state-dir.js';

export interface BuildFlags extends RemoteFlags {
  file?: string;
  target?: string;
  buildArg: string[];
  platform?: string;
  secret: string[];
  ssh: string[];
  /** commander names a `--no-cache` flag `cache` (false when given). */
  cache?: boolean;
  progress: string;
  output: string[];
  tag: string[];
  cacheFrom: string[];
  cacheTo: string[];
  insecureRegistry: string[];
  /** A scheduler's `host:port`; default `KILN_ADDR`, else the local farm. */
  addr?: string;
  /** Entitlements the build asks for (`--allow`). */
  allow: string[];
  /** `--no-cache-filter` (commander strips the `no-`). */
  cacheFilter: string[];
  pull?: boolean;
  label: string[];
  addHost: string[];
  quiet?: boolean;
  iidfile?: string;
  metadataFile?: string;
  push?: boolean;
  load?: boolean;
  network?: string;
  shmSize?: string;
  ulimit: string[];
  buildContext: string[];
  annotation: string[];
  attest: string[];
  provenance?: string;
  sbom?: string;
}

export async function build(context: string, flags: BuildFlags): Promise<void> {
  const env = process.env;
  const ctx = await buildContext(context, flags.file);
  // Temporary directories of this build (the docker tar --load sends), removed at the end.
  const scratch: string[] = [];
  try {
    await buildIn(ctx, flags, env, scratch);
  } finally {
    await ctx.cleanup();
    await Promise.all(scratch.map((d) => rm(d, { recursive: true, force: true })));
  }
}

async function buildIn(
  ctx: BuildContext,
  flags: BuildFlags,
  env: NodeJS.ProcessEnv,
  scratch: string[],
): Promise<void> {
  const { dir: ctxDir, dockerfile, dockerfilePath } = ctx;
  const outputs = flags.output.map(parseOutput);
  if (flags.push) {
    if (flags.tag.length === 0) throw new BuildOptionError('--push needs an image name (-t NAME)');
    outputs.push({ type: 'image' });
  }
  // --load: the image as a docker tar, loaded into the engine once written.
  const load = flags.load ? await dockerEngine(env, scratch) : undefined;
  if (load) outputs.push({ type: 'docker', dest: load.file });
  const annotations = parseAnnotations(flags.annotation);
  if (
    Object.keys(annotations).length > 0 &&
    !outputs.some((o) => o.type === 'oci' || o.type === 'docker' || o.type === 'image')
  )
    throw new BuildOptionError(
      '--annotation needs an image output (-o type=oci|docker|registry, --push or --load)',
    );
  const attests = attestAttrs(flags.attest, flags.provenance, flags.sbom);
  if (
    Object.keys(attests).length > 0 &&
    !outputs.some((o) => o.type === 'oci' || o.type === 'docker' || o.type === 'image')
  )
    throw new BuildOptionError(
      'attestations are attached to an image: give an image output (-o type=oci|docker|registry, --push or --load)',
    );
  const toStdout = outputs.filter((o) => o.type !== 'image' && o.dest === '-');
  if (toStdout.length > 1) throw new BuildOptionError('only one output can go to stdout (-)');
  if (toStdout.length > 0 && process.stdout.isTTY)
    throw new BuildOptionError(
      'refusing to write a tar to a terminal: redirect stdout, or give the output a dest=',
    );
  const cacheImports = flags.cacheFrom.map((s) => parseCacheSpec(s, '--cache-from', env));
  const cacheExports = flags.cacheTo.map((s) => parseCacheSpec(s, '--cache-to', env));
  const cacheOpts = cacheSolveOptions(cacheImports, cacheExports);
  const secrets = new Map(
    flags.secret.map((s) => parseSecret(s, env)).map((s) => [s.id, s] as const),
  );
  // A missing file or unset variable is the user's error now, not a step's failure later.
  for (const s of secrets.values()) await s.check();
  const ssh = Object.fromEntries(
    flags.ssh.map((s) => parseSsh(s, env)).map((s) => [s.id, s.socket] as const),
  );
  const attrs: Record<string, string> = {};
  for (const a of flags.buildArg) {
    const kv = parseBuildArg(a, env);
    if (kv) attrs[`build-arg:${kv[0]}`] = kv[1];
  }
  const named = parseBuildContexts(flags.buildContext);
  await Promise.all(
    Object.entries(named.localDirs).map(([name, dir]) =>
      stat(dir).then(
        (st) => {
          if (!st.isDirectory())
            throw new BuildOptionError(`--build-context ${name}: ${dir} is not a directory`);
        },
        (cause: NodeJS.ErrnoException) => {
          throw new BuildOptionError(
            `--build-context ${name}: ${dir}: ${cause.code ?? String(cause)}`,
          );
        },
      ),
    ),
  );
  Object.assign(attrs, named.attrs, attests);
  if (flags.target) attrs.target = flags.target;
  if (flags.platform) attrs.platform = flags.platform;
  if (flags.cache === false) attrs['no-cache'] = '';
  else if (flags.cacheFilter.length > 0) attrs['no-cache'] = flags.cacheFilter.join(',');
  if (flags.pull) attrs['image-resolve-mode'] = 'pull';
  for (const l of flags.label) {
    const i = l.indexOf('=');
    if (i <= 0) throw new BuildOptionError(`--label ${JSON.stringify(l)}: want KEY=VALUE`);
    attrs[`label:${l.slice(0, i)}`] = l.slice(i + 1);
  }
  if (flags.addHost.length > 0)
    attrs['add-hosts'] = flags.addHost
      .map((h) => {
        // buildx's host:ip (the ip may be IPv6, so split at the first colon), or host=ip.
        const i = h.search(/[=:]/);
        if (i <= 0) throw new BuildOptionError(`--add-host ${JSON.stringify(h)}: want HOST:IP`);
        return `${h.slice(0, i)}=${h.slice(i + 1)}`;
      })
      .join(',');
  // Checked here, so that a typo is an error before any farm is reached.
  for (const p of (flags.platform ?? '')
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean)) {
    let parsed;
    try {
      parsed = parsePlatform(p);
    } catch (cause) {
      throw new BuildOptionError(`--platform ${p}: ${(cause as Error).message}`);
    }
    if (!isKnownArchitecture(parsed))
      throw new BuildOptionError(
        `--platform ${p}: unknown architecture ${JSON.stringify(parsed.architecture)} (want amd64, arm64, arm, 386, ppc64le, s390x, riscv64...)`,
      );
  }

  // Each named context directory's own .dockerignore, as buildx's frontend reads it.
  const namedDockerignores: Record<string, Buffer> = {};
  for (const [local, dir] of Object.entries(named.localDirs)) {
    const ignore = await readFile(join(dir, '.dockerignore')).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return undefined;
      throw new BuildOptionError(
        `--build-context ${local}: ${join(dir, '.dockerignore')}: ${e.code ?? String(e)}`,
      );
    });
    if (ignore) namedDockerignores[local] = ignore;
  }
  // <Dockerfile>.dockerignore beside the Dockerfile wins over <context>/.dockerignore.
  const dockerignore =
    (dockerfilePath
      ? await readFile(`${dockerfilePath}.dockerignore`).catch(() => undefined)
      : undefined) ?? (await readFile(join(ctxDir, '.dockerignore')).catch(() => undefined));

  const progress = flags.quiet ? 'quiet' : flags.progress;
  const mode = progress === 'auto' ? (process.stderr.isTTY ? 'tty' : 'plain') : progress;
  if (mode !== 'tty' && mode !== 'plain' && mode !== 'quiet' && mode !== 'rawjson')
    throw new BuildOptionError(
      `--progress ${flags.progress}: want auto, tty, plain, rawjson or quiet`,
    );

  const entitlements = parseAllow(flags.allow);
  sandboxAttrs(flags, attrs, entitlements);
  const addr = flags.addr ?? env.KILN_ADDR;
  if (addr && flags.insecureRegistry.length > 0)
    process.stderr.write(
      `WARNING: --insecure-registry applies to the local farm only; the farm at ${addr} uses its own registry settings\n`,
    );
  const connect = await remoteConnectOptions(flags, env);
  if (!addr && (connect.tls || connect.token))
    throw new BuildOptionError(
      'TLS and token options are for a remote farm (--addr or KILN_ADDR); the local farm needs none',
    );
  const farm = addr
    ? await remoteFarm(addr, connect)
    : await localFarm({
        stateDir: defaultStateDir(env),
        insecureRegistries: flags.insecureRegistry,
        idleTimeoutMs: idleTimeout(undefined, env),
        onWait: (m) => process.stderr.write(`${m}\n`),
      });
  const abort = new AbortController();
  const onSignal = (): void => abort.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const printer =
    mode === 'quiet'
      ? quietPrinter
      : mode === 'rawjson'
        ? undefined
        : createPrinter(mode, process.stderr);
  const session = farm.client.session({
    localDirs: { ...named.localDirs, context: ctxDir, ...cacheOpts.localDirs },
    secrets: async (id) => secrets.get(id)?.read(),
    ssh,
    // The user's registry logins (docker config, credential helpers), asked for per host by the
    // build's pulls and pushes (BuildKit's session/auth); the farm never keeps them.
    registryAuth: registryAuth(env),
    onExport: (index, platform) => exportWriter(outputs[index]!, platform),
    onCacheExport: cacheOpts.onCacheExport,
    // Context file digests persist between builds: unchanged files are not read again (one file
    // per context root in this directory; it replaces the one file of older versions).
    digestCacheDir: join(defaultStateDir(env), 'client', 'context-digests'),
    // The local farm hands artifacts over by reference: copied from its store, not streamed.
    ...(farm.store ? { localStore: farm.store } : {}),
    // The frontend asks for the context with the ignore file's patterns: walked while it runs.
    prefetch: contextPrefetch(dockerignore),
  });
  const buildId = randomUUID();
  let metadata: Record<string, string> = {};
  const events = printer ? new StatusEvents((e) => printer.onEvent(e)) : undefined;
  const status = (async () => {
    for await (const f of farm.client.status(buildId, 0, { signal: abort.signal }))
      if (events) events.push(f);
      else process.stderr.write(`${rawJson(f)}\n`);
  })();
  // Its failure (the farm refused the caller, say) is the Solve's to report: never unhandled.
  status.catch(() => undefined);
  try {
    const res = await solveAndReceive(
      farm.client,
      session,
      {
        buildId,
        sessionId: session.id,
        frontend: 'dockerfile.v0',
        entitlements,
        attrs,
        inputs: {
          dockerfile: dockerfileInput(dockerfile, {
            ...(dockerignore ? { dockerignore } : {}),
            ...(Object.keys(namedDockerignores).length > 0 ? { namedDockerignores } : {}),
          }),
        },
        exporters: outputs.map((o) => exporterEntry(o, flags.tag, annotations)),
        cacheImports,
        cacheExports,
      },
      {
        signal: abort.signal,
        onError: async (err: unknown) => {
          // The status stream ends with the build: its last frames mark the failed step.
          if (!abort.signal.aborted) await settled(status, 2000);
          throw await explain(err, dockerfile.toString('utf8'), flags.file ?? 'Dockerfile', abort);
        },
      },
    );
    const pushed = res.exporterResponse['containerimage.digest'];
    if (pushed && mode !== 'quiet')
      process.stderr.write(`pushed ${res.exporterResponse['image.name'] ?? ''} (${pushed})\n`);
    await status.catch(() => undefined);
    // Reading the image ids back from a written tar costs a pass over the tar: only when asked.
    if (flags.iidfile || flags.metadataFile || flags.quiet)
      metadata = await buildMetadata(res.exporterResponse, outputs, flags.tag);
  } finally {
    abort.abort();
    await status.catch(() => undefined);
    printer?.finish();
    session.close();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await farm.close();
    await session.cacheSaved();
  }
  if (load) await load.load();
  const id = metadata['containerimage.config.digest'] ?? metadata['containerimage.digest'];
  if (flags.iidfile) {
    if (!id)
      throw new BuildOptionError(
        '--iidfile: the build made no image (use -o type=oci|docker, --push or --load)',
      );
    await writeFileAtomic(flags.iidfile, id);
  }
  if (flags.metadataFile)
    await writeFileAtomic(flags.metadataFile, `${JSON.stringify(metadata, null, 2)}\n`);
  if (flags.quiet && id) process.stdout.write(`${id}\n`);
  if (outputs.length === 0 && mode !== 'quiet')
    process.stderr.write(
      'WARNING: no output specified; the result is only in the build cache (use --output)\n',
    );
}

const quietPrinter = { onEvent: (): void => undefined, finish: (): void => undefined };

/** A status frame as one JSON line (`--progress rawjson`): numbers for int64s, base64 for bytes. */
function rawJson(f: unknown): string {
  return JSON.stringify(f, function (this: unknown, _k, v: unknown) {
    if (v && typeof v === 'object') {
      if ('low' in v && 'high' in v && 'toNumber' in v)
        return (v as { toNumber(): number }).toNumber();
      if (v instanceof Uint8Array) return Buffer.from(v).toString('base64');
      if (
        (v as { type?: unknown }).type === 'Buffer' &&
        Array.isArray((v as { data?: unknown }).data)
      )
        return Buffer.from((v as { data: number[] }).data).toString('base64');
    }
    return v;
  });
}

/**
 * buildx's metadata keys for the build's image: `containerimage.digest`,
 * `containerimage.config.digest` (read from a written oci/docker file when the farm's response
 * has no such key), `image.name`.
 */
async function buildMetadata(
  response: Record<string, string>,
  outputs: OutputSpec[],
  tags: string[],
): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const k of ['containerimage.digest', 'containerimage.config.digest', 'image.name'])
    if (response[k]) out[k] = response[k];
  const file = outputs.find(
    (o): o is Extract<OutputSpec, { type: 'oci' | 'docker' }> =>
      (o.type === 'oci' || o.type === 'docker') && o.dest !== '-',
  );
  if (file && !out['containerimage.digest']) {
    const { imageIdsFromTar } = await import('../image-ids.js');
    Object.assign(out, await imageIdsFromTar(file.dest).catch(() => ({})));
    const names = file.name ? [file.name, ...tags] : tags;
    if (names.length > 0) out['image.name'] = names.join(',');
  }
  return out;
}

async function writeFileAtomic(file: string, data: string): Promise<void> {
  const tmp = `${file}.kiln-tmp-${process.pid}`;
  await writeFile(tmp, data);
  await rename(tmp, file);
}

/**
 * buildx's `--network`, `--shm-size` and `--ulimit` as the Dockerfile frontend's attributes
 * (`force-network-mode`, `shm-size` in bytes, `ulimit`). `--network host` asks for the
 * `network.host` entitlement, as buildx does; the farm must grant it.
 */
function sandboxAttrs(flags: BuildFlags, attrs: Record<string, string>, allow: string[]): void {
  const net = flags.network;
  if (net === 'host' || net === 'none') {
    attrs['force-network-mode'] = net;
    if (net === 'host' && !allow.includes('network.host')) allow.push('network.host');
  } else if (net !== undefined && net !== 'default')
    throw new BuildOptionError(`--network ${net}: want default, none or host`);
  if (flags.shmSize !== undefined) attrs['shm-size'] = String(parseMemBytes(flags.shmSize));
  if (flags.ulimit.length > 0) {
    for (const u of flags.ulimit)
      if (!/^[a-z]+=-?[0-9]+(:-?[0-9]+)?$/.test(u))
        throw new BuildOptionError(`--ulimit ${JSON.stringify(u)}: want NAME=SOFT[:HARD]`);
    attrs.ulimit = flags.ulimit.join(',');
  }
}

/**
 * The docker engine `--load` loads into: `DOCKER_HOST` (unix:// or tcp://), else
 * /var/run/docker.sock; checked with `/_ping` before the build, so a missing engine is an error
 * at once. `load()` posts the written docker tar to `/images/load`.
 */
async function dockerEngine(
  env: NodeJS.ProcessEnv,
  scratch: string[],
): Promise<{ file: string; load: () => Promise<void> }> {
  const host = env.DOCKER_HOST || 'unix:///var/run/docker.sock';
  const { request } = await import('node:http');
  let target: { socketPath: string } | { host: string; port: number };
  if (host.startsWith('unix://')) target = { socketPath: host.slice('unix://'.length) };
  else if (host.startsWith('tcp://')) {
    const u = new URL(`http://${host.slice('tcp://'.length)}`);
    target = { host: u.hostname, port: Number(u.port || 2375) };
  } else throw new BuildOptionError(`--load: DOCKER_HOST ${host}: want unix:// or tcp://`);
  const call = (method: string, path: string, body?: NodeJS.ReadableStream): Promise<string> =>
    new Promise((resolve, reject) => {
      const req = request(
        { ...target, method, path, headers: body ? { 'content-type': 'application/x-tar' } : {} },
        (res) => {
          let text = '';
          res.on('data', (d: Buffer) => (text += d.toString()));
          res.on('end', () =>
            (res.statusCode ?? 500) < 300
              ? resolve(text)
              : reject(new Error(`HTTP ${res.statusCode}: ${text.trim()}`)),
          );
        },
      );
      req.on('error', reject);
      if (body) body.pipe(req);
      else req.end();
    });
  try {
    await call('GET', '/_ping');
  } catch (e) {
    throw new BuildOptionError(
      `--load: no docker engine reachable at ${host} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); use -o type=docker,dest=FILE or -o type=oci,dest=FILE instead`,
    );
  }
  const dir = await mkdtemp(join(tmpdir(), 'kiln-load-'));
  scratch.push(dir);
  const file = join(dir, 'image.tar');
  return {
    file,
    load: async () => {
      try {
        const { createReadStream } = await import('node:fs');
        const text = await call('POST', '/images/load?quiet=1', createReadStream(file));
        const m = /Loaded image[^:]*: ([^"\\]+)/.exec(text);
        process.stderr.write(`loaded into the docker engine${m ? `: ${m[1]}` : ''}\n`);
      } catch (e) {
        throw new BuildOptionError(`--load: the docker engine at ${host}: ${(e as Error).message}`);
      }
    },
  };
}

/**
 * The user's registry credentials by host, from the docker config the docker CLI reads
 * (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`: `auths`, `credsStore`,
 * `credHelpers`), read when the farm asks (`@kiln/registry` loads only then: a build that pulls
 * nothing private never pays for it).
 */
function registryAuth(
  env: NodeJS.ProcessEnv,
): (host: string) => Promise<{ username: string; secret: string } | undefined> {
  const dir = env.DOCKER_CONFIG || join(env.HOME || homedir(), '.docker');
  let creds: Promise<CredentialsProvider> | undefined;
  return async (host) => {
    creds ??= import('@kiln/registry').then((r) =>
      r.dockerConfigCredentials(join(dir, 'config.json')),
    );
    const c = await (await creds)(host);
    return c ? { username: c.username, secret: c.password } : undefined;
  };
}

function exporterEntry(
  o: OutputSpec,
  tags: string[],
  annotations: Record<string, string>,
): { type: string; attrs: Record<string, string> } {
  if (o.type === 'oci' || o.type === 'docker' || o.type === 'image') {
    const names = o.name ? [o.name, ...tags] : tags;
    const attrs: Record<string, string> = {
      ...annotations,
      ...o.attrs,
      ...(names.length ? { name: names.join(',') } : {}),
    };
    if (o.type === 'image') attrs.push = 'true';
    return { type: o.type, attrs };
  }
  return { type: o.type, attrs: {} };
}

/**
 * Where an export's artifact goes. Several platforms into one local/tar/docker destination: one
 * subdirectory/file per platform, as buildx does.
 */
function exportWriter(o: OutputSpec, platform: string): Writable {
  if (o.type === 'image')
    throw new KilnError('EXPORT_UNEXPECTED', 'a pushed image sends nothing back to the client');
  const suffix = platform.replace(/\//g, '_');
  if (o.dest === '-') {
    if (suffix)
      throw new BuildOptionError(
        'several platforms cannot be written to stdout: give the output a dest= file or directory',
      );
    return stdoutWriter();
  }
  if (o.type === 'local') return localDirWriter(suffix ? join(o.dest, suffix) : o.dest);
  return atomicFileWriter(suffix ? `${o.dest}.${suffix}` : o.dest);
}

/** The artifact (a tar: `-o -`, `dest=-`) on stdout, which stays open for what follows. */
function stdoutWriter(): Writable {
  return new Writable({
    write(chunk: Buffer, _enc, cb) {
      if (process.stdout.write(chunk)) cb();
      else process.stdout.once('drain', () => cb());
    },
  });
}

/** An error as the user should read it: the Dockerfile lines it is about, and what went wrong. */
async function explain(
  err: unknown,
  source: string,
  filename: string,
  abort: AbortController,
): Promise<unknown> {
  if (abort.signal.aborted) return new KilnError('CANCELED', 'build canceled (interrupted)');
  const { DockerfileError, formatDockerfileError, printSourceRange } =
    await import('@kiln/dockerfile');
  // The error arrived before the frontend's error classes were loaded (they load only now):
  // rebuild it from its wire form, so that a Dockerfile error is a DockerfileError again.
  if (err instanceof KilnError && !(err instanceof DockerfileError))
    err = reviveError(err.code, err.message, err.details, err.retryable);
  if (err instanceof DockerfileError)
    return new FormattedError(formatDockerfileError(err, source, filename), err);
  if (!(err instanceof KilnError)) return err;
  const lines = err.details.sourceLines;
  if (typeof lines !== 'string' || lines === '') return err;
  const ranges = lines.split(',').map((r) => {
    const [start = 0, end = start] = r.split('-').map(Number);
    return { start, end };
  });
  return new FormattedError(
    `${printSourceRange(source, ranges, filename)}ERROR: ${err.message} [${err.code}]`,
    err,
  );
}
