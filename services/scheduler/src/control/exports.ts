/**
 * Exporters, orchestrated: each `SolveRequest.exporters` entry becomes export tasks run by a
 * worker (`workerpb.Task.export`, see the worker's task-runner.ts) next to the results, whose
 * artifact (in the content store) is then streamed to the client over its session.
 *
 * - `oci`: one task over every platform's result (an OCI index when there are several).
 * - `docker`, `tar`, `local`: one task per platform; a multi-platform build names each artifact
 *   by its platform (the client writes `<dest>/<os>_<arch>` or `<dest>.<os>_<arch>`, as buildx).
 * - Export tasks are keyed by what they export, so an unchanged result re-exported is a cache hit.
 */
import { createHash, randomUUID } from 'node:crypto';
import type { TaskInit, TaskResult } from '@kiln/bus';
import type { control, pb } from '@kiln/protocol';
import type { BlobStore, Digest } from '@kiln/store';
import type { SubmitOptions } from '../dispatch/index.js';
import { SolveRequestInvalidError } from '../solver/errors.js';
import type { SolveResult, VertexSnapshot } from '../solver/solve.js';
import type { ClientSession } from './session.js';

export const EXPORTER_TYPES = ['local', 'tar', 'oci', 'docker'] as const;

type ExportEntry = NonNullable<Parameters<typeof control.ExportEntry.create>[0]>;

export interface PlatformResult {
  platform: pb.IPlatform;
  /** `os/arch[/variant]` */
  name: string;
  solved: SolveResult;
  imageConfigJson: string;
}

export interface ExportDeps {
  submit(task: TaskInit, opts?: SubmitOptions): Promise<TaskResult>;
  store: BlobStore | undefined;
  session: ClientSession | undefined;
  buildId: string;
  sessionId: string;
  signal: AbortSignal;
  onVertex: (v: VertexSnapshot) => void;
}

/** Rejects exporter entries this scheduler cannot run, before the build starts. */
export function checkExporters(entries: readonly ExportEntry[], hasSession: boolean): void {
  for (const e of entries) {
    const type = e.type ?? '';
    if (!(EXPORTER_TYPES as readonly string[]).includes(type)) {
      throw new SolveRequestInvalidError(
        `exporter type ${JSON.stringify(type)} is not supported (want ${EXPORTER_TYPES.join(', ')})`,
        { exporter: type },
      );
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

/** Runs every exporter; resolves with the number of artifacts streamed to the client. */
export async function runExports(
  entries: readonly ExportEntry[],
  results: readonly PlatformResult[],
  d: ExportDeps,
): Promise<number> {
  let count = 0;
  for (const [index, e] of entries.entries()) {
    const type = e.type ?? '';
    const names = (e.attrs?.name ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
    const groups = type === 'oci' ? [results] : results.map((r) => [r]);
    for (const group of groups) {
      const label = group.length === 1 && results.length > 1 ? group[0]!.name : '';
      const digest = await exportOne(type, names, group, index, label, d);
      if (!d.store) throw new SolveRequestInvalidError('this scheduler has no content store');
      if (!d.session) throw new SolveRequestInvalidError('the build has no session');
      await d.session.sendExport(index, label, await d.store.get(digest as Digest));
      count++;
    }
  }
  return count;
}

async function exportOne(
  type: string,
  names: string[],
  group: readonly PlatformResult[],
  index: number,
  label: string,
  d: ExportDeps,
): Promise<string> {
  const inputs = group.map((r) => ({
    resultId: r.solved.result.resultId ?? '',
    layers: r.solved.result.layers ?? [],
    holderWorker: r.solved.workerId,
  }));
  const cacheKey = sha([
    'kiln-export-v1',
    type,
    names.join(','),
    ...group.flatMap((r) => [r.name, r.imageConfigJson, r.solved.result.resultId ?? '']),
  ]);
  const digest = `export-${index}${label ? `-${label}` : ''}`;
  const snap: VertexSnapshot = {
    digest,
    inputs: [],
    name: `exporting to ${type}${label ? ` (${label})` : ''}`,
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
        preferredWorker: group[0]!.solved.workerId,
        export: {
          type,
          names,
          platforms: group.map((r) => ({ platform: r.platform, configJson: r.imageConfigJson })),
        },
      },
      {
        buildId: d.buildId,
        signal: d.signal,
        preferredWorkers: [group[0]!.solved.workerId],
      },
    );
    const blob = r.outputs[0]?.layers?.[0]?.digest;
    if (!blob) throw new SolveRequestInvalidError(`the ${type} export produced no artifact`);
    d.onVertex({
      ...snap,
      cached: r.cached || r.taskId !== taskId,
      completedAt: Date.now(),
      workerId: r.workerId,
    });
    return blob;
  } catch (e) {
    d.onVertex({ ...snap, completedAt: Date.now(), error: String((e as Error).message ?? e) });
    throw e;
  }
}
