/**
 * Pluggable frontends (BuildKit's gateway frontends, in process): a frontend turns a source
 * (a Dockerfile, or anything else) plus options into one LLB Definition and image config per
 * platform. Frontends are registered by name; `dockerfile.v0` is registered by default.
 */
import { isIP } from 'node:net';
import { NetMode, parsePlatform } from '@kiln/llb';
import type { Definition, Platform, Ulimit } from '@kiln/llb';
import { convertDockerfile, marshalResult } from './convert/convert.js';
import type { ConvertOptions, MetaResolver } from './convert/convert.js';
import { imageConfigToJson } from './convert/image-config.js';
import { NAMED_CONTEXT_PREFIX } from './convert/named-context.js';
import type { ImageConfig } from './convert/image-config.js';
import { readDockerignore } from './dockerignore.js';
import { DockerfileError } from './dockerfile-error.js';
import type { FrontendLimits } from './limits.js';

/** What a frontend is given. */
export interface FrontendInputs {
  /** The Dockerfile (or other source) bytes. */
  dockerfile: string | Uint8Array;
  /** The content of the ignore file chosen for it (see selectDockerignore), if any. */
  dockerignore?: string | Uint8Array;
  /** The ignore files of named context directories (`context:NAME=local:DIR`), by `DIR`. */
  namedDockerignores?: Readonly<Record<string, string | Uint8Array>>;
  /**
   * Frontend attributes as BuildKit names them: `build-arg:K`, `target`, `platform`
   * (comma-separated), `filename`, `no-cache` (empty: all stages, or stage names), `label:K`,
   * `context` (the context's source name), `multi-platform`, `image-resolve-mode`, `hostname`,
   * `add-hosts` (`host=ip,...`), `context:NAME` (named contexts, see ConvertOptions),
   * `force-network-mode` (`none`, `host`, `sandbox`), `shm-size` (bytes), `ulimit`
   * (`name=soft[:hard],...`).
   */
  opts: Readonly<Record<string, string>>;
  /** Image config lookup for base images. */
  metaResolver?: MetaResolver;
  /** The client session that serves the context (makes its source stable across marshals). */
  sessionId?: string;
  /** The platform RUN executes on; the host's by default. */
  buildPlatform?: Platform;
  /** Bounds on the frontend's work for this Dockerfile (per platform); generous defaults. */
  limits?: Partial<FrontendLimits>;
}

/** One platform's result. */
export interface FrontendPlatformResult {
  platform: Platform;
  definition: Definition;
  imageConfig: ImageConfig;
  /** `imageConfig` as Go's encoding/json writes it (what BuildKit exports). */
  imageConfigJson: string;
}

export interface FrontendResult {
  platforms: FrontendPlatformResult[];
}

/** A frontend: stateless, safe to call concurrently. */
export interface Frontend {
  readonly name: string;
  solve(inputs: FrontendInputs): Promise<FrontendResult>;
}

const registry = new Map<string, Frontend>();

/** Registers (or replaces) a frontend under its name. */
export function registerFrontend(frontend: Frontend): void {
  registry.set(frontend.name, frontend);
}

/** The frontend registered under `name`, or undefined. */
export function getFrontend(name: string): Frontend | undefined {
  return registry.get(name);
}

/** The names of the registered frontends, sorted. */
export function listFrontends(): string[] {
  return [...registry.keys()].sort();
}

function badOption(message: string): DockerfileError {
  return new DockerfileError(message, { startLine: 0 });
}

/** dockerui's `add-hosts`: `host=ip` pairs, comma-separated. */
function parseExtraHosts(v: string): { host: string; ip: string }[] {
  return v.split(',').map((field) => {
    const i = field.indexOf('=');
    if (i < 0) throw badOption(`invalid key-value pair ${field}`);
    const host = field.slice(0, i).toLowerCase();
    const ip = field.slice(i + 1).toLowerCase();
    if (!isIP(ip)) throw badOption(`failed to parse IP ${ip}`);
    return { host, ip };
  });
}

/** The rlimit names docker's units.ParseUlimit knows. */
const ULIMIT_NAMES = new Set([
  'core',
  'cpu',
  'data',
  'fsize',
  'locks',
  'memlock',
  'msgqueue',
  'nice',
  'nofile',
  'nproc',
  'rss',
  'rtprio',
  'rttime',
  'sigpending',
  'stack',
]);

/** dockerui's `ulimit`: `name=soft[:hard]`, comma-separated (docker's units.ParseUlimit). */
function parseUlimits(v: string): Ulimit[] {
  return v.split(',').map((field) => {
    const fail = (why: string): never => {
      throw badOption(`failed to parse ulimit: ${why}`);
    };
    const i = field.indexOf('=');
    if (i < 0) fail(`invalid ulimit argument: ${field}`);
    const name = field.slice(0, i);
    if (!ULIMIT_NAMES.has(name)) fail(`invalid ulimit type: ${name}`);
    const parts = field.slice(i + 1).split(':');
    if (parts.length > 2)
      fail(
        `too many limit value arguments - ${field.slice(i + 1)}, can only have up to two, \`soft[:hard]\``,
      );
    const num = (s: string): number => {
      if (!/^-?[0-9]{1,18}$/.test(s) || !Number.isSafeInteger(Number(s)))
        fail(`invalid ulimit value ${JSON.stringify(s)} in ${field}`);
      return Number(s);
    };
    const soft = num(parts[0]!);
    const hard = parts.length > 1 ? num(parts[1]!) : soft;
    if (soft > hard)
      fail(`ulimit soft limit must be less than or equal to hard limit: ${soft} > ${hard}`);
    return { name, soft, hard };
  });
}

/** Reads BuildKit's frontend attributes into conversion options. */
export function convertOptionsFromAttrs(attrs: Readonly<Record<string, string>>): ConvertOptions {
  const buildArgs: Record<string, string> = {};
  const labels: Record<string, string> = {};
  const opts: ConvertOptions = { buildArgs, labels };
  const namedContexts: Record<string, string> = {};
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith('build-arg:')) buildArgs[k.slice('build-arg:'.length)] = v;
    else if (k.startsWith('label:')) labels[k.slice('label:'.length)] = v;
    else if (k.startsWith(NAMED_CONTEXT_PREFIX))
      namedContexts[k.slice(NAMED_CONTEXT_PREFIX.length)] = v;
  }
  if (Object.keys(namedContexts).length > 0) opts.namedContexts = namedContexts;
  if (attrs.target) opts.target = attrs.target;
  if (attrs.platform) {
    try {
      opts.targetPlatforms = attrs.platform.split(',').map((p) => parsePlatform(p.trim()));
    } catch (err) {
      throw badOption(
        `invalid platform ${JSON.stringify(attrs.platform)}: ${(err as Error).message}`,
      );
    }
  }
  if (attrs.context) opts.contextName = attrs.context;
  if ('no-cache' in attrs) {
    const v = attrs['no-cache'];
    opts.ignoreCache =
      v === ''
        ? true
        : v
            .split(',')
            .map((s) => s.trim())
            .filter(Boolean);
  }
  if (attrs['multi-platform'] !== undefined)
    opts.multiPlatform = attrs['multi-platform'] === 'true';
  const mode = attrs['image-resolve-mode'];
  if (mode) {
    if (mode !== 'default' && mode !== 'pull' && mode !== 'local') {
      throw badOption(`invalid image-resolve-mode: ${mode}`);
    }
    opts.imageResolveMode = mode;
  }
  if (attrs.hostname) opts.hostname = attrs.hostname;
  if (attrs['add-hosts']) opts.extraHosts = parseExtraHosts(attrs['add-hosts']);
  const net = attrs['force-network-mode'];
  if (net) {
    if (net === 'none') opts.networkMode = NetMode.NONE;
    else if (net === 'host') opts.networkMode = NetMode.HOST;
    else if (net !== 'sandbox') throw badOption(`invalid netmode ${net}`);
  }
  const shm = attrs['shm-size'];
  if (shm) {
    if (!/^[0-9]{1,15}$/.test(shm))
      throw badOption(`failed to parse shm size: invalid syntax: ${JSON.stringify(shm)}`);
    opts.shmSize = Number(shm);
  }
  if (attrs.ulimit) opts.ulimits = parseUlimits(attrs.ulimit);
  return opts;
}

/** The Dockerfile frontend (`dockerfile.v0`). */
export const dockerfileFrontend: Frontend = {
  name: 'dockerfile.v0',
  async solve(inputs: FrontendInputs): Promise<FrontendResult> {
    const opts = convertOptionsFromAttrs(inputs.opts);
    if (inputs.metaResolver) opts.metaResolver = inputs.metaResolver;
    if (inputs.sessionId) opts.sessionId = inputs.sessionId;
    if (inputs.buildPlatform) opts.buildPlatform = inputs.buildPlatform;
    if (inputs.limits) opts.limits = inputs.limits;
    if (inputs.dockerignore !== undefined)
      opts.dockerignore = readDockerignore(inputs.dockerignore);
    if (inputs.namedDockerignores)
      opts.namedContextExcludes = Object.fromEntries(
        Object.entries(inputs.namedDockerignores).map(([k, v]) => [k, readDockerignore(v)]),
      );
    const targets = opts.targetPlatforms?.length ? opts.targetPlatforms : [undefined];
    const results = await Promise.all(
      targets.map((p) =>
        convertDockerfile(inputs.dockerfile, { ...opts, ...(p ? { targetPlatform: p } : {}) }),
      ),
    );
    return {
      platforms: results.map((r) => ({
        platform: r.platform,
        definition: marshalResult(r, { sourceMapFilename: inputs.opts.filename || 'Dockerfile' }),
        imageConfig: r.imageConfig,
        imageConfigJson: imageConfigToJson(r.imageConfig),
      })),
    };
  },
};

registerFrontend(dockerfileFrontend);
