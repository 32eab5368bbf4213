/**
 * The image config a Dockerfile produces (BuildKit's `dockerfile2llb/image.go` and the
 * `DockerOCIImage` type): the OCI image config plus Docker's extensions (Healthcheck, OnBuild,
 * Shell), and its history entries. `imageConfigToJson` writes it as Go's encoding/json does, so
 * bytes (and digests) match BuildKit's.
 */
import { formatGoDuration } from '../go/duration.js';
import { goQuote } from '../go/quote.js';
import type { Platform } from '@kiln/llb';

export interface HealthcheckConfig {
  Test?: string[];
  /** Nanoseconds, as Go's time.Duration. */
  Interval?: number;
  Timeout?: number;
  StartPeriod?: number;
  StartInterval?: number;
  Retries?: number;
}

/** The `config` object of an image (OCI ImageConfig + Docker's extensions). */
export interface ContainerConfig {
  User?: string;
  ExposedPorts?: Record<string, Record<string, never>>;
  Env?: string[];
  Entrypoint?: string[];
  Cmd?: string[];
  Volumes?: Record<string, Record<string, never>>;
  WorkingDir?: string;
  Labels?: Record<string, string>;
  StopSignal?: string;
  ArgsEscaped?: boolean;
  Healthcheck?: HealthcheckConfig;
  OnBuild?: string[];
  Shell?: string[];
}

export interface HistoryEntry {
  created?: string;
  created_by?: string;
  author?: string;
  comment?: string;
  empty_layer?: boolean;
}

/** An image config (`application/vnd.oci.image.config.v1+json`) as BuildKit writes it. */
export interface ImageConfig {
  created?: string;
  author?: string;
  architecture: string;
  os: string;
  'os.version'?: string;
  'os.features'?: string[];
  variant?: string;
  config: ContainerConfig;
  rootfs: { type: string; diff_ids: string[] };
  history?: HistoryEntry[];
}

/** The comment BuildKit puts on every history entry it writes. */
export const HISTORY_COMMENT = 'buildkit.dockerfile.v0';

/** Docker's default PATH for Linux (and every non-Windows OS). */
export const DEFAULT_PATH_ENV = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** The config of `FROM scratch` for a platform (BuildKit's emptyImage). */
export function emptyImage(platform: Platform): ImageConfig {
  const img: ImageConfig = {
    architecture: platform.architecture,
    os: platform.os,
    config: { Env: [`PATH=${DEFAULT_PATH_ENV}`], WorkingDir: '/' },
    rootfs: { type: 'layers', diff_ids: [] },
  };
  if (platform.osVersion) img['os.version'] = platform.osVersion;
  if (platform.osFeatures) img['os.features'] = [...platform.osFeatures];
  if (platform.variant) img.variant = platform.variant;
  return img;
}

/** A deep copy (configs are plain JSON). */
export function cloneImage(img: ImageConfig): ImageConfig {
  return structuredClone(img);
}

function asStringArray(v: unknown): string[] | undefined {
  return Array.isArray(v) ? v.map((x) => String(x)) : undefined;
}

function asSet(v: unknown): Record<string, Record<string, never>> | undefined {
  if (v === null || typeof v !== 'object') return undefined;
  const out: Record<string, Record<string, never>> = {};
  for (const k of Object.keys(v)) out[k] = {};
  return out;
}

/**
 * Reads an image config from a registry (JSON text, bytes or an already parsed object), keeping the
 * fields BuildKit's DockerOCIImage keeps. Throws on invalid JSON.
 */
export function parseImageConfig(input: string | Uint8Array | object): ImageConfig {
  const raw: unknown =
    typeof input === 'string'
      ? JSON.parse(input)
      : input instanceof Uint8Array
        ? JSON.parse(Buffer.from(input).toString('utf8'))
        : input;
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw))
    throw new Error('image config is not a JSON object');
  const r = raw as Record<string, unknown>;
  const c = (r.config ?? {}) as Record<string, unknown>;
  const config: ContainerConfig = {};
  if (typeof c.User === 'string' && c.User) config.User = c.User;
  const ports = asSet(c.ExposedPorts);
  if (ports && Object.keys(ports).length) config.ExposedPorts = ports;
  const env = asStringArray(c.Env);
  if (env?.length) config.Env = env;
  const ep = asStringArray(c.Entrypoint);
  if (ep?.length) config.Entrypoint = ep;
  const cmd = asStringArray(c.Cmd);
  if (cmd?.length) config.Cmd = cmd;
  const vols = asSet(c.Volumes);
  if (vols && Object.keys(vols).length) config.Volumes = vols;
  if (typeof c.WorkingDir === 'string' && c.WorkingDir) config.WorkingDir = c.WorkingDir;
  if (c.Labels && typeof c.Labels === 'object') {
    const labels = Object.fromEntries(
      Object.entries(c.Labels as Record<string, unknown>).map(([k, v]) => [k, String(v)]),
    );
    if (Object.keys(labels).length) config.Labels = labels;
  }
  if (typeof c.StopSignal === 'string' && c.StopSignal) config.StopSignal = c.StopSignal;
  if (c.ArgsEscaped === true) config.ArgsEscaped = true;
  if (c.Healthcheck && typeof c.Healthcheck === 'object')
    config.Healthcheck = { ...(c.Healthcheck as HealthcheckConfig) };
  const onbuild = asStringArray(c.OnBuild);
  if (onbuild?.length) config.OnBuild = onbuild;
  const shell = asStringArray(c.Shell);
  if (shell?.length) config.Shell = shell;
  const rootfs = (r.rootfs ?? {}) as Record<string, unknown>;
  const img: ImageConfig = {
    architecture: typeof r.architecture === 'string' ? r.architecture : '',
    os: typeof r.os === 'string' ? r.os : '',
    config,
    rootfs: {
      type: typeof rootfs.type === 'string' ? rootfs.type : 'layers',
      diff_ids: asStringArray(rootfs.diff_ids) ?? [],
    },
  };
  if (typeof r.created === 'string') img.created = r.created;
  if (typeof r.author === 'string' && r.author) img.author = r.author;
  if (typeof r['os.version'] === 'string' && r['os.version']) img['os.version'] = r['os.version'];
  const feats = asStringArray(r['os.features']);
  if (feats?.length) img['os.features'] = feats;
  if (typeof r.variant === 'string' && r.variant) img.variant = r.variant;
  if (Array.isArray(r.history)) {
    img.history = (r.history as Record<string, unknown>[]).map((h) => {
      const e: HistoryEntry = {};
      if (typeof h.created === 'string') e.created = h.created;
      if (typeof h.created_by === 'string' && h.created_by) e.created_by = h.created_by;
      if (typeof h.author === 'string' && h.author) e.author = h.author;
      if (typeof h.comment === 'string' && h.comment) e.comment = h.comment;
      if (h.empty_layer === true) e.empty_layer = true;
      return e;
    });
  }
  return img;
}

/** A time as Go's encoding/json writes a UTC time.Time (RFC 3339, no trailing zero fraction). */
export function goTime(t: Date | undefined): string | undefined {
  if (!t) return undefined;
  return t
    .toISOString()
    .replace(/\.000Z$/, 'Z')
    .replace(/(\.\d*?)0+Z$/, '$1Z');
}

/** Appends a history entry as BuildKit's commitToHistory does. */
export function commitToHistory(
  img: ImageConfig,
  msg: string,
  withLayer: boolean,
  fromState: boolean,
  created?: string,
): void {
  const entry: HistoryEntry = {};
  if (created) entry.created = created;
  entry.created_by = fromState ? `${msg} # buildkit` : msg;
  entry.comment = HISTORY_COMMENT;
  if (!withLayer) entry.empty_layer = true;
  (img.history ??= []).push(entry);
}

/** Sets or replaces `k` in a `K=V` list (BuildKit's addEnv). */
export function addEnv(env: string[] | undefined, k: string, v: string): string[] {
  const out = [...(env ?? [])];
  const i = out.findIndex((e) => e.split('=', 1)[0] === k);
  if (i >= 0) out[i] = `${k}=${v}`;
  else out.push(`${k}=${v}`);
  return out;
}

function sortedKeys<T>(o: Record<string, T>): Record<string, T> {
  const out: Record<string, T> = {};
  for (const k of Object.keys(o).sort()) out[k] = o[k]!;
  return out;
}

/** Go's `json.Marshal` string escaping: HTML-safe (`<`, `>`, `&`) and U+2028/9 escaped. */
function goJsonStringify(v: unknown): string {
  return JSON.stringify(v)
    .replace(/</g, '\\u003c')
    .replace(/>/g, '\\u003e')
    .replace(/&/g, '\\u0026')
    .replace(/\u2028/g, '\\u2028')
    .replace(/\u2029/g, '\\u2029');
}

/**
 * The config as JSON, fields in Go's struct order, empty fields omitted where Go's `omitempty`
 * omits them, map keys sorted.
 */
export function imageConfigToJson(img: ImageConfig): string {
  const c = img.config;
  const config: Record<string, unknown> = {};
  if (c.User) config.User = c.User;
  if (c.ExposedPorts && Object.keys(c.ExposedPorts).length)
    config.ExposedPorts = sortedKeys(c.ExposedPorts);
  if (c.Env?.length) config.Env = c.Env;
  if (c.Entrypoint?.length) config.Entrypoint = c.Entrypoint;
  if (c.Cmd?.length) config.Cmd = c.Cmd;
  if (c.Volumes && Object.keys(c.Volumes).length) config.Volumes = sortedKeys(c.Volumes);
  if (c.WorkingDir) config.WorkingDir = c.WorkingDir;
  if (c.Labels && Object.keys(c.Labels).length) config.Labels = sortedKeys(c.Labels);
  if (c.StopSignal) config.StopSignal = c.StopSignal;
  if (c.ArgsEscaped) config.ArgsEscaped = true;
  if (c.Healthcheck) {
    const h = c.Healthcheck;
    const hc: Record<string, unknown> = {};
    if (h.Test?.length) hc.Test = h.Test;
    if (h.Interval) hc.Interval = h.Interval;
    if (h.Timeout) hc.Timeout = h.Timeout;
    if (h.StartPeriod) hc.StartPeriod = h.StartPeriod;
    if (h.StartInterval) hc.StartInterval = h.StartInterval;
    if (h.Retries) hc.Retries = h.Retries;
    config.Healthcheck = hc;
  }
  if (c.OnBuild?.length) config.OnBuild = c.OnBuild;
  if (c.Shell?.length) config.Shell = c.Shell;
  const out: Record<string, unknown> = {};
  if (img.created) out.created = img.created;
  if (img.author) out.author = img.author;
  out.architecture = img.architecture;
  out.os = img.os;
  if (img['os.version']) out['os.version'] = img['os.version'];
  if (img['os.features']?.length) out['os.features'] = img['os.features'];
  if (img.variant) out.variant = img.variant;
  out.config = config;
  out.rootfs = { type: img.rootfs.type, diff_ids: img.rootfs.diff_ids };
  if (img.history?.length) {
    out.history = img.history.map((h) => {
      const e: Record<string, unknown> = {};
      if (h.created) e.created = h.created;
      if (h.created_by) e.created_by = h.created_by;
      if (h.author) e.author = h.author;
      if (h.comment) e.comment = h.comment;
      if (h.empty_layer) e.empty_layer = true;
      return e;
    });
  }
  return goJsonStringify(out);
}

/** Go's `fmt.Sprintf("%q", []string)`: `["a" "b"]`. */
export function goQuoteSliceQ(args: readonly string[]): string {
  return '[' + args.map((a) => goQuote(a)).join(' ') + ']';
}

/** Go's `fmt.Sprintf("%v", []string)`: `[a b]`. */
export function goSliceV(args: readonly string[]): string {
  return '[' + args.join(' ') + ']';
}

/** Go's `%+v` of a HealthcheckConfig, as BuildKit writes it into the history. */
export function healthcheckHistory(h: HealthcheckConfig): string {
  return (
    `{Test:${goSliceV(h.Test ?? [])} Interval:${formatGoDuration(h.Interval ?? 0)} Timeout:${formatGoDuration(h.Timeout ?? 0)} ` +
    `StartPeriod:${formatGoDuration(h.StartPeriod ?? 0)} StartInterval:${formatGoDuration(h.StartInterval ?? 0)} Retries:${h.Retries ?? 0}}`
  );
}
