/**
 * The implementation of `kiln build` (see build.ts): the Dockerfile goes to a scheduler (remote, or
 * the local farm, see farm/local.ts) with a session serving the context, secrets and ssh agents; the
 * progress comes from the build's status stream; exporters' artifacts come back over the session.
 */
import { randomUUID } from 'node:crypto';
import { createWriteStream, mkdirSync } from 'node:fs';
import type { WriteStream } from 'node:fs';
import { mkdir, readFile, rename, rm } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { cacheSolveOptions, dockerfileInput } from '@kiln/client';
// @kiln/llb is loaded by the client library anyway; the Dockerfile frontend only for an error.
import { isKnownArchitecture, parsePlatform } from '@kiln/llb';
import type { CredentialsProvider } from '@kiln/registry';
import { KilnError, reviveError } from '@kiln/protocol/errors';
import {
  BuildOptionError,
  parseAllow,
  parseBuildArg,
  parseCacheSpec,
  parseOutput,
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
import { createPrinter } from '../progress.js';
import { defaultStateDir } from '../state-dir.js';
import { StatusEvents } from '../status-events.js';

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
}

export async function build(context: string, flags: BuildFlags): Promise<void> {
  const env = process.env;
  const ctx = await buildContext(context, flags.file);
  try {
    await buildIn(ctx, flags, env);
  } finally {
    await ctx.cleanup();
  }
}

async function buildIn(
  ctx: BuildContext,
  flags: BuildFlags,
  env: NodeJS.ProcessEnv,
): Promise<void> {
  const { dir: ctxDir, dockerfile, dockerfilePath } = ctx;
  const outputs = flags.output.map(parseOutput);
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
  if (flags.target) attrs.target = flags.target;
  if (flags.platform) attrs.platform = flags.platform;
  if (flags.cache === false) attrs['no-cache'] = '';
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

  // <Dockerfile>.dockerignore beside the Dockerfile wins over <context>/.dockerignore.
  const dockerignore =
    (dockerfilePath
      ? await readFile(`${dockerfilePath}.dockerignore`).catch(() => undefined)
      : undefined) ?? (await readFile(join(ctxDir, '.dockerignore')).catch(() => undefined));

  const mode =
    flags.progress === 'auto' ? (process.stderr.isTTY ? 'tty' : 'plain') : flags.progress;
  if (mode !== 'tty' && mode !== 'plain')
    throw new BuildOptionError(`--progress ${flags.progress}: want auto, tty or plain`);

  const entitlements = parseAllow(flags.allow);
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
  const printer = createPrinter(mode, process.stderr);
  const session = farm.client.session({
    localDirs: { context: ctxDir, ...cacheOpts.localDirs },
    secrets: async (id) => secrets.get(id)?.read(),
    ssh,
    // The user's registry logins (docker config, credential helpers), asked for per host by the
    // build's pulls and pushes (BuildKit's session/auth); the farm never keeps them.
    registryAuth: registryAuth(env),
    onExport: (index, platform) => exportWriter(outputs[index]!, platform),
    onCacheExport: cacheOpts.onCacheExport,
    // Context file digests persist between builds: unchanged files are not read again.
    digestCacheFile: join(defaultStateDir(env), 'client', 'context-digests'),
  });
  const buildId = randomUUID();
  const events = new StatusEvents((e) => printer.onEvent(e));
  const status = (async () => {
    for await (const f of farm.client.status(buildId, 0, { signal: abort.signal })) events.push(f);
  })();
  // Its failure (the farm refused the caller, say) is the Solve's to report: never unhandled.
  status.catch(() => undefined);
  try {
    const res = await farm.client
      .solve(
        {
          buildId,
          sessionId: session.id,
          frontend: 'dockerfile.v0',
          entitlements,
          attrs,
          inputs: {
            dockerfile: dockerfileInput(dockerfile, dockerignore ? { dockerignore } : {}),
          },
          exporters: outputs.map((o) => exporterEntry(o, flags.tag)),
          cacheImports,
          cacheExports,
        },
        { signal: abort.signal },
      )
      .catch(async (err: unknown) => {
        // The status stream ends with the build: its last frames mark the failed step.
        if (!abort.signal.aborted) await settled(status, 2000);
        throw await explain(err, dockerfile.toString('utf8'), flags.file ?? 'Dockerfile', abort);
      });
    await session.exportsWritten(Number(res.exporterResponse['export.count'] ?? 0));
    const pushed = res.exporterResponse['containerimage.digest'];
    if (pushed)
      process.stderr.write(`pushed ${res.exporterResponse['image.name'] ?? ''} (${pushed})\n`);
    await status.catch(() => undefined);
  } finally {
    abort.abort();
    await status.catch(() => undefined);
    printer.finish();
    session.close();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await farm.close();
  }
  if (outputs.length === 0)
    process.stderr.write(
      'WARNING: no output specified; the result is only in the build cache (use --output)\n',
    );
}

/** Waits for `p` to settle, or `ms` at most (a farm that never ends the stream). */
async function settled(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    p.catch(() => undefined),
    new Promise((r) => {
      timer = setTimeout(r, ms);
    }),
  ]);
  clearTimeout(timer);
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
): { type: string; attrs: Record<string, string> } {
  if (o.type === 'oci' || o.type === 'docker' || o.type === 'image') {
    const names = o.name ? [o.name, ...tags] : tags;
    const attrs: Record<string, string> = names.length ? { name: names.join(',') } : {};
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
  if (o.type === 'local') return extractingWriter(suffix ? join(o.dest, suffix) : o.dest);
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

/** The result tree as a tar stream, extracted into `dest` (`.wh.` names are files here, not whiteouts); finishes once all is written. */
function extractingWriter(dest: string): Writable {
  const pass = new PassThrough();
  let applied: Promise<unknown> | undefined;
  const start = (): Promise<unknown> =>
    (applied ??= mkdir(dest, { recursive: true })
      // The tar applier loads only for a local export (it is not on the client's common path).
      .then(() => import('@kiln/layers'))
      .then(({ applyTar }) => applyTar(pass, dest, { whiteouts: false })));
  return new Writable({
    write(chunk: Buffer, _enc, cb) {
      start().catch(() => undefined);
      if (pass.write(chunk)) cb();
      else pass.once('drain', () => cb());
    },
    final(cb) {
      pass.end();
      start().then(
        () => cb(),
        (e: unknown) => cb(e as Error),
      );
    },
  });
}

/** A file written under a temporary name and renamed into place when complete. */
function atomicFileWriter(dest: string): Writable {
  const tmp = `${dest}.kiln-tmp-${process.pid}`;
  let out: WriteStream | undefined;
  const file = (): WriteStream => (out ??= createWriteStream(tmp));
  mkdirSync(dirname(dest), { recursive: true });
  return new Writable({
    write(chunk: Buffer, _enc, cb) {
      if (file().write(chunk)) cb();
      else file().once('drain', () => cb());
    },
    final(cb) {
      const f = file();
      f.end(() => {
        rename(tmp, dest).then(
          () => cb(),
          (e: unknown) => cb(e as Error),
        );
      });
    },
    destroy(err, cb) {
      out?.destroy();
      void rm(tmp, { force: true }).finally(() => cb(err));
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
