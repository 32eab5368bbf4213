/** The implementation of `kiln build` (see build.ts). */
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import {
  DockerfileError,
  formatDockerfileError,
  getFrontend,
  printSourceRange,
  selectDockerignore,
} from '@kiln/dockerfile';
import type { ImageMetadata } from '@kiln/dockerfile';
import { formatPlatform, hostPlatform } from '@kiln/llb';
import type { Definition, Platform } from '@kiln/llb';
import { KilnError } from '@kiln/protocol';
import { Engine } from '@kiln/worker';
import type { ExportSpec, ProgressEvent } from '@kiln/worker';
import {
  BuildOptionError,
  parseBuildArg,
  parseOutput,
  parseSecret,
  parseSsh,
} from '../build-options.js';
import type { OutputSpec } from '../build-options.js';
import { FormattedError } from '../formatted-error.js';
import { createPrinter } from '../progress.js';
import { defaultStateDir } from '../state-dir.js';

export interface BuildFlags {
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
  insecureRegistry: string[];
}

export async function build(context: string, flags: BuildFlags): Promise<void> {
  const env = process.env;
  const ctxDir = resolve(context);
  const dockerfilePath = flags.file ? resolve(flags.file) : join(ctxDir, 'Dockerfile');
  const dockerfile = await readFile(dockerfilePath).catch((cause: NodeJS.ErrnoException) => {
    throw new BuildOptionError(
      `cannot read Dockerfile ${dockerfilePath}: ${cause.code ?? String(cause)}`,
    );
  });
  const outputs = flags.output.map(parseOutput);
  const secrets = new Map(
    flags.secret.map((s) => parseSecret(s, env)).map((s) => [s.id, s] as const),
  );
  const ssh = new Map(flags.ssh.map((s) => parseSsh(s, env)).map((s) => [s.id, s] as const));
  const attrs: Record<string, string> = { filename: dockerfilePath };
  for (const a of flags.buildArg) {
    const kv = parseBuildArg(a, env);
    if (kv) attrs[`build-arg:${kv[0]}`] = kv[1];
  }
  if (flags.target) attrs.target = flags.target;
  if (flags.platform) attrs.platform = flags.platform;
  if (flags.cache === false) attrs['no-cache'] = '';

  // <Dockerfile>.dockerignore beside the Dockerfile wins over <context>/.dockerignore.
  const ignoreFiles: Record<string, Uint8Array> = {};
  const specific = await readFile(`${dockerfilePath}.dockerignore`).catch(() => undefined);
  const generic = await readFile(join(ctxDir, '.dockerignore')).catch(() => undefined);
  if (specific) ignoreFiles['Dockerfile.dockerignore'] = specific;
  if (generic) ignoreFiles['.dockerignore'] = generic;
  const ignore = selectDockerignore(ignoreFiles, 'Dockerfile');

  const engine = await Engine.open({
    stateDir: defaultStateDir(env),
    registry: { insecureRegistries: flags.insecureRegistry },
  });
  const frontend = getFrontend('dockerfile.v0')!;
  const metaResolver = async (ref: string, platform: Platform): Promise<ImageMetadata> => {
    const r = await engine.metadata.resolveImageConfig(ref, platform);
    return { ref: r.ref, digest: r.digest, config: r.config };
  };
  let result;
  try {
    result = await frontend.solve({
      dockerfile,
      ...(ignore ? { dockerignore: ignore.patterns.join('\n') } : {}),
      opts: attrs,
      metaResolver,
      buildPlatform: hostPlatform(),
    });
  } catch (err) {
    if (err instanceof DockerfileError) {
      throw new FormattedError(
        formatDockerfileError(err, dockerfile.toString('utf8'), flags.file ?? 'Dockerfile'),
        err,
      );
    }
    throw err;
  }

  const mode =
    flags.progress === 'auto' ? (process.stderr.isTTY ? 'tty' : 'plain') : flags.progress;
  if (mode !== 'tty' && mode !== 'plain')
    throw new BuildOptionError(`--progress ${flags.progress}: want auto, tty or plain`);
  const printer = createPrinter(mode, process.stderr);
  const session = {
    localDirs: { context: ctxDir },
    secrets: async (id: string) => secrets.get(id)?.read(),
    ssh: (id: string) => Promise.resolve(ssh.get(id)?.socket),
  };
  const abort = new AbortController();
  const onSignal = (): void =>
    abort.abort(new KilnError('CANCELED', 'build canceled (interrupted)'));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const multi = result.platforms.length > 1;
    const solved: {
      snapshot: string | undefined;
      config: Record<string, unknown>;
      platform: Platform;
    }[] = [];
    for (const p of result.platforms) {
      const r = await engine
        .solve(p.definition.toBytes(), {
          session,
          signal: abort.signal,
          onProgress: (e: ProgressEvent) => printer.onEvent(e),
          ...(flags.cache === false ? { noCache: true } : {}),
        })
        .catch((err: unknown) => {
          throw withDockerfileExcerpt(
            err,
            p.definition,
            dockerfile.toString('utf8'),
            flags.file ?? 'Dockerfile',
          );
        });
      solved.push({
        snapshot: r.snapshot,
        config: JSON.parse(p.imageConfigJson) as Record<string, unknown>,
        platform: p.platform,
      });
    }
    for (const o of outputs) {
      if (multi && o.type === 'oci') {
        // One OCI index over the platforms' manifests, as BuildKit's oci exporter writes.
        const names = o.name ? [o.name, ...flags.tag] : flags.tag;
        await engine.exportMultiPlatform(solved, { type: 'oci', dest: o.dest, names });
        continue;
      }
      for (const r of solved) {
        await engine.export(
          r.snapshot,
          exportSpec(o, r.config, flags.tag, multi ? r.platform : undefined),
        );
      }
    }
  } finally {
    printer.finish();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  if (outputs.length === 0)
    process.stderr.write(
      'WARNING: no output specified; the result is only in the build cache (use --output)\n',
    );
}

/**
 * A failed step shown as BuildKit shows it: the Dockerfile lines of the failing vertex (from the
 * definition's source map), then the error.
 */
function withDockerfileExcerpt(
  err: unknown,
  def: Definition,
  source: string,
  filename: string,
): unknown {
  if (!(err instanceof KilnError)) return err;
  const digest = err.details.digest;
  if (typeof digest !== 'string') return err;
  const ranges = (def.source?.locations?.[digest]?.locations ?? []).flatMap((l) =>
    (l.ranges ?? []).map((r) => ({
      start: r.start?.line ?? 0,
      end: r.end?.line ?? r.start?.line ?? 0,
    })),
  );
  if (ranges.length === 0) return err;
  return new FormattedError(
    `${printSourceRange(source, ranges, filename)}ERROR: ${err.message} [${err.code}]`,
    err,
  );
}

function exportSpec(
  o: OutputSpec,
  config: Record<string, unknown>,
  tags: string[],
  platform: Platform | undefined,
): ExportSpec {
  // Several platforms into one local/tar destination: one subdirectory/file per platform, as buildx.
  const suffix = platform ? formatPlatform(platform).replace(/\//g, '_') : '';
  if (o.type === 'local') return { type: 'local', dest: suffix ? join(o.dest, suffix) : o.dest };
  if (o.type === 'tar') return { type: 'tar', dest: suffix ? `${o.dest}.${suffix}` : o.dest };
  const names = o.name ? [o.name, ...tags] : tags;
  return {
    type: o.type,
    dest: suffix ? `${o.dest}.${suffix}` : o.dest,
    config,
    names,
  };
}
