/**
 * Exporters, orchestrated: each `SolveRequest.exporters` entry becomes export tasks run by a
 * worker (`workerpb.Task.export`, see the worker's task-runner.ts) next to the results, whose
 * artifact (in the content store) is then streamed to the client over its session.
 *
 * - `oci`: one task over every platform's result (an OCI index when there are several).
 * - `image` with `push=true` (or `registry`, buildx's shorthand): one task over every platform,
 *   whose worker pushes the image (an index over several platforms) to the registry under each
 *   `name`; nothing is streamed, the response names the pushed digest (`containerimage.digest`).
 * - `docker`, `tar`, `local`: one task per platform; a multi-platform build names each artifact
 *   by its platform (the client writes `<dest>/<os>_<arch>` or `<dest>.<os>_<arch>`, as buildx).
 * - Export tasks are keyed by what they export and the build's cache namespace (its tenant's,
 *   unless the farm shares caches), so an unchanged result re-exported by the same tenant is a
 *   cache hit, and one tenant's export never answers another's.
 */
import { createHash, randomUUID } from 'node:crypto';
import type { TaskInit, TaskResult } from '@kiln/bus';
import { annotationAttrs, indexAnnotations } from '@kiln/protocol';
import type { control, pb } from '@kiln/protocol';
import type { BlobStore, Digest } from '@kiln/store';
import type { SubmitOptions } from '../dispatch/index.js';
import { SolveRequestInvalidError } from '../solver/errors.js';
import type { SolveResult, VertexSnapshot } from '../solver/solve.js';
import type { ClientSession } from './session.js';

export const EXPORTER_TYPES = ['local', 'tar', 'oci', 'docker', 'image', 'registry'] as const;

const pushes = (type: string): boolean => type === 'image' || type === 'registry';

type ExportEntry = NonNullable<Parameters<typeof control.ExportEntry.create>[0]>;

export interface PlatformResult {
  platform: pb.IPlatform;
  /** `os/arch[/variant]` */
  name: string;
  solved: SolveResult;
  imageConfigJson: string;
  /** The Definition solved (with its source map): what provenance describes. */
  definition?: pb.IDefinition;
  /** In-toto predicates to attach to this platform's image (provenance). */
  attestations?: { predicateType: string; predicate: Uint8Array }[];
}

export interface ExportDeps {
  submit(task: TaskInit, opts?: SubmitOptions): Promise<TaskResult>;
  store: BlobStore | undefined;
  session: ClientSession | undefined;
  buildId: string;
  sessionId: string;
  /** The build's cache namespace ('' when the farm shares caches between tenants). */
  cacheNamespace: string;
  signal: AbortSignal;
  onVertex: (v: VertexSnapshot) => void;
  /** `attest:sbom`: image exports carry an SBOM of each platform's filesystem. */
  sbom?: boolean;
  /** The solve's frontend attributes (`build-arg:SOURCE_DATE_EPOCH`). */
  frontendAttrs?: Readonly<Record<string, string>>;
}

/** The exporter types that make an image (and so carry attestations). */
const makesImage = (type: string): boolean => type === 'oci' || type === 'docker' || pushes(type);

/**
 * BuildKit's `rewrite-timestamp=true` exporter option: the epoch the image's layers are clamped
 * to (the exporter's `source-date-epoch`, else the build's SOURCE_DATE_EPOCH build argument);
 * '' without the option.
 */
export function exportEpoch(
  e: ExportEntry,
  frontendAttrs: Readonly<Record<string, string>> = {},
): string {
  const rewrite = e.attrs?.['rewrite-timestamp'];
  if (rewrite === undefined || rewrite === 'false') return '';
  const type = e.type ?? '';
  if (rewrite !== 'true')
    throw new SolveRequestInvalidError(`rewrite-timestamp=${rewrite}: want true or false`, {
      exporter: type,
    });
  if (!makesImage(type))
    throw new SolveRequestInvalidError(
      `rewrite-timestamp is an option of image outputs (oci, docker, image), not ${type}`,
      { exporter: type },
    );
  const epoch = e.attrs?.['source-date-epoch'] || frontendAttrs['build-arg:SOURCE_DATE_EPOCH'];
  if (!epoch)
    throw new SolveRequestInvalidError(
      'rewrite-timestamp=true needs SOURCE_DATE_EPOCH (--build-arg SOURCE_DATE_EPOCH=SECONDS, or the output option source-date-epoch=SECONDS)',
      { exporter: type },
    );
  if (!/^[0-9]{1,15}$/.test(epoch))
    throw new SolveRequestInvalidError(`invalid SOURCE_DATE_EPOCH ${JSON.stringify(epoch)}`, {
      exporter: type,
    });
  return epoch;
}

/** Rejects exporter entries this scheduler cannot run, before the build starts. */
export function checkExporters(
  entries: readonly ExportEntry[],
  hasSession: boolean,
  frontendAttrs: Readonly<Record<string, string>> = {},
): void {
  for (const e of entries) {
    const type = e.type ?? '';
    if (!(EXPORTER_TYPES as readonly string[]).includes(type)) {
      throw new SolveRequestInvalidError(
        `exporter type ${JSON.stringify(type)} is not supported (want ${EXPORTER_TYPES.join(', ')})`,
        { exporter: type },
      );
    }
    exportEpoch(e, frontendAttrs);
    const annotations = annotationAttrs(e.attrs ?? {});
    if (Object.keys(annotations).length > 0 && (type === 'local' || type === 'tar'))
      throw new SolveRequestInvalidError(
        `the ${type} exporter writes files, not an image: annotations are for image outputs`,
        { exporter: type },
      );
    if (pushes(type)) {
      if (type === 'image' && e.attrs?.push !== 'true')
        throw new SolveRequestInvalidError(
          'the image exporter has no image store here: use push=true (or type=registry), or type=oci',
          { exporter: type },
        );
      if (!e.attrs?.name)
        throw new SolveRequestInvalidError(`the ${type} exporter needs a name (name=REPO:TAG)`, {
          exporter: type,
        });
      continue;
    }
    if (!hasSession)
      throw new SolveRequestInvalidError(
        `the ${type} exporter sends its output to the client: the solve needs a session`,
        { exporter: type },
      );
  }
}

const sha = (parts: string[]): string => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p).update('\0');
  return `sha256:${h.digest('hex')}`;
};

/**
 * Runs every exporter; resolves with what to add to the exporter response: `export.count` (the
 * artifacts streamed to the client) and, for a push, `containerimage.digest` and `image.name`.
 */
export async function runExports(
  entries: readonly ExportEntry[],
  results: readonly PlatformResult[],
  d: ExportDeps,
): Promise<Record<string, string>> {
  let count = 0;
  const response: Record<string, string> = {};
  for (const [index, e] of entries.entries()) {
    const type = e.type ?? '';
    const names = (e.attrs?.name ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
    const annotations = annotationAttrs(e.attrs ?? {});
    // Index annotations need an index: several platforms into one image.
    indexAnnotations(annotations, (pushes(type) || type === 'oci') && results.length > 1);
    if (pushes(type)) {
      const r = await exportOne(e, 'image', names, annotations, results, index, '', d);
      response['containerimage.digest'] = r.resultId;
      response['image.name'] = names.join(',');
      continue;
    }
    const groups = type === 'oci' ? [results] : results.map((r) => [r]);
    for (const group of groups) {
      const label = group.length === 1 && results.length > 1 ? group[0]!.name : '';
      const { blob: digest } = await exportOne(e, type, names, annotations, group, index, label, d);
      if (!d.store) throw new SolveRequestInvalidError('this scheduler has no content store');
      if (!d.session) throw new SolveRequestInvalidError('the build has no session');
      await d.session.sendStoredExport(index, label, d.store, digest as Digest);
      count++;
    }
  }
  response['export.count'] = String(count);
  return response;
}

async function exportOne(
  e: ExportEntry,
  type: string,
  names: string[],
  annotations: Record<string, string>,
  group: readonly PlatformResult[],
  index: number,
  label: string,
  d: ExportDeps,
): Promise<{ resultId: string; blob: string }> {
  const image = makesImage(type);
  const epoch = exportEpoch(e, d.frontendAttrs);
  const sbom = image && !!d.sbom;
  const attestationsOf = (r: PlatformResult) => (image ? (r.attestations ?? []) : []);
  const inputs = group.map((r) => ({
    resultId: r.solved.result.resultId ?? '',
    layers: r.solved.result.layers ?? [],
    holderWorker: r.solved.workerId,
  }));
  const cacheKey = sha([
    'kiln-export-v1',
    d.cacheNamespace,
    // A push changes the registry, not the store: it runs in every build (the registry may
    // have lost what an earlier build pushed).
    type === 'image' ? d.buildId : '',
    type,
    names.join(','),
    JSON.stringify(Object.entries(annotations).sort()),
    `sbom=${sbom}`,
    `epoch=${epoch}`,
    ...group.flatMap((r) => [
      r.name,
      r.imageConfigJson,
      r.solved.result.resultId ?? '',
      // A provenance predicate names its build: an export with one is never another's.
      ...attestationsOf(r).map((a) => sha([a.predicateType, Buffer.from(a.predicate).toString()])),
    ]),
  ]);
  const digest = `export-${index}${label ? `-${label}` : ''}`;
  const what = type === 'image' ? `pushing ${names.join(', ')}` : `exporting to ${type}`;
  const snap: VertexSnapshot = {
    digest,
    inputs: [],
    name: `${what}${label ? ` (${label})` : ''}`,
    cached: false,
    startedAt: Date.now(),
    cacheKey,
  };
  d.onVertex({ ...snap });
  try {
    const taskId = randomUUID();
    const r = await d.submit(
      {
        taskId,
        buildId: d.buildId,
        vertexDigest: digest,
        op: new Uint8Array(0),
        inputs,
        cacheKey,
        platform: group[0]!.platform,
        sessionId: d.sessionId,
        cacheNamespace: d.cacheNamespace,
        preferredWorker: group[0]!.solved.workerId,
        export: {
          type,
          names,
          annotations,
          platforms: group.map((r) => ({
            platform: r.platform,
            configJson: r.imageConfigJson,
            attestations: attestationsOf(r),
          })),
          sbom,
          sourceDateEpoch: epoch,
        },
      },
      {
        buildId: d.buildId,
        signal: d.signal,
        preferredWorkers: [group[0]!.solved.workerId],
      },
    );
    const out = r.outputs[0];
    const blob = out?.layers?.[0]?.digest ?? '';
    if (!out?.resultId || (type !== 'image' && !blob))
      throw new SolveRequestInvalidError(`the ${type} export produced no artifact`);
    d.onVertex({
      ...snap,
      cached: r.cached || r.taskId !== taskId,
      completedAt: Date.now(),
      workerId: r.workerId,
    });
    return { resultId: out.resultId, blob };
  } catch (e) {
    d.onVertex({ ...snap, completedAt: Date.now(), error: String((e as Error).message ?? e) });
    throw e;
  }
}
