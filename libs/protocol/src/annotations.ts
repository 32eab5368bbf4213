/**
 * Image annotations as BuildKit's image exporters take them (attributes `annotation.K`,
 * `annotation-manifest.K`, `annotation-manifest[os/arch].K`, `annotation-index.K`): what a
 * scheduler checks and passes on (the attributes without their `annotation` prefix, the
 * `ExportSpec.annotations` of a task) and what a worker writes into manifests and the index.
 */
import { KilnError } from './errors.js';
import { formatPlatform, parsePlatform } from './platform.js';
import type { Platform } from './platform.js';

export class AnnotationError extends KilnError {
  constructor(message: string) {
    super('EXPORT_INVALID', message);
  }
}

const PREFIX = 'annotation';

interface Parsed {
  kind: 'manifest' | 'index';
  /** A normalized `os/arch[/variant]`, or '' for every platform. */
  platform: string;
  key: string;
}

/** One key of `ExportSpec.annotations` (`.K`, `-manifest[p].K`, `-index.K`). */
function parseKey(k: string): Parsed {
  const m =
    /^(|-manifest|-index|-manifest-descriptor|-index-descriptor)(?:\[([^\]]*)\])?\.(.+)$/.exec(k);
  if (!m) throw new AnnotationError(`invalid annotation attribute ${PREFIX}${k}`);
  const [, type = '', platform, key = ''] = m;
  if (type.endsWith('-descriptor'))
    throw new AnnotationError(
      `${PREFIX}${type} annotations are not supported (manifest and index annotations are)`,
    );
  if (type === '-index' && platform !== undefined)
    throw new AnnotationError(`${PREFIX}-index annotations take no platform: ${PREFIX}${k}`);
  let p = '';
  if (platform !== undefined) {
    try {
      p = formatPlatform(parsePlatform(platform));
    } catch (cause) {
      throw new AnnotationError(
        `${PREFIX}${k}: invalid platform ${JSON.stringify(platform)}: ${(cause as Error).message}`,
      );
    }
  }
  return { kind: type === '-index' ? 'index' : 'manifest', platform: p, key };
}

/**
 * The annotation attributes of an exporter entry, without their prefix, checked; throws an
 * AnnotationError for one Kiln cannot honour.
 */
export function annotationAttrs(attrs: Readonly<Record<string, string>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(attrs)) {
    if (!k.startsWith(PREFIX)) continue;
    const rest = k.slice(PREFIX.length);
    parseKey(rest);
    out[rest] = v;
  }
  return out;
}

/** The annotations of the manifest of `platform`: every manifest's, then its own. */
export function manifestAnnotations(
  annotations: Readonly<Record<string, string>>,
  platform: Platform | undefined,
): Record<string, string> {
  const mine = platform ? formatPlatform(platform) : '';
  const all: Record<string, string> = {};
  const own: Record<string, string> = {};
  for (const [k, v] of Object.entries(annotations)) {
    const p = parseKey(k);
    if (p.kind !== 'manifest') continue;
    if (p.platform === '') all[p.key] = v;
    else if (p.platform === mine) own[p.key] = v;
  }
  return { ...all, ...own };
}

/** The annotations of the index; an error when there is none (one platform), as BuildKit. */
export function indexAnnotations(
  annotations: Readonly<Record<string, string>>,
  hasIndex: boolean,
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(annotations)) {
    const p = parseKey(k);
    if (p.kind === 'index') out[p.key] = v;
  }
  if (!hasIndex && Object.keys(out).length > 0)
    throw new AnnotationError(
      'index annotations need an index: build several platforms (a one-platform image has none)',
    );
  return out;
}
