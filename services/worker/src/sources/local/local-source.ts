/**
 * The `local://<name>` source: a directory the client hands in through its session, filtered by
 * the op's include/exclude patterns and followpaths. The source has no cache pin of its own: the
 * scheduler resolves it again in every build and keys what reads it by the content checksums of
 * the paths read (answered by the worker holding it).
 */
import { stat } from 'node:fs/promises';
import { KilnError } from '@kiln/protocol';
import type { pb } from '@kiln/protocol';
import { copyPath } from '../../fs/index.js';

export class LocalSourceError extends KilnError {
  constructor(
    code: 'LOCAL_NOT_FOUND' | 'LOCAL_INVALID',
    message: string,
    name: string,
    cause?: unknown,
  ) {
    super(code, message, { cause, details: { local: name } });
  }
}

export interface LocalSpec {
  name: string;
  includePatterns: string[];
  excludePatterns: string[];
  followPaths: string[];
  /** `local.sharedkeyhint`: names the context among the client's (with the session shared key). */
  sharedKeyHint?: string;
}

function jsonList(v: string | undefined, what: string, name: string): string[] {
  if (!v) return [];
  try {
    const a: unknown = JSON.parse(v);
    if (Array.isArray(a) && a.every((x) => typeof x === 'string')) return a;
  } catch (cause) {
    throw new LocalSourceError(
      'LOCAL_INVALID',
      `local ${name}: ${what} is not a JSON list of strings`,
      name,
      cause,
    );
  }
  throw new LocalSourceError(
    'LOCAL_INVALID',
    `local ${name}: ${what} is not a JSON list of strings`,
    name,
  );
}

export function localSpec(op: pb.ISourceOp): LocalSpec {
  const name = (op.identifier ?? '').slice('local://'.length);
  const attrs = op.attrs ?? {};
  return {
    name,
    includePatterns: jsonList(attrs['local.includepattern'], 'local.includepattern', name),
    excludePatterns: jsonList(attrs['local.excludepatterns'], 'local.excludepatterns', name),
    followPaths: jsonList(attrs['local.followpaths'], 'local.followpaths', name),
    ...(attrs['local.sharedkeyhint'] ? { sharedKeyHint: attrs['local.sharedkeyhint'] } : {}),
  };
}

/** Resolves the host directory of a local source from the session; a typed error when absent. */
export async function localDir(
  spec: LocalSpec,
  session: {
    localDirs?: Readonly<Record<string, string>> | undefined;
    syncLocal?: ((spec: LocalSpec) => Promise<string>) | undefined;
  },
): Promise<string> {
  if (session.syncLocal) return session.syncLocal(spec);
  const dir = session.localDirs?.[spec.name];
  if (dir === undefined) {
    throw new LocalSourceError(
      'LOCAL_NOT_FOUND',
      `no local directory named "${spec.name}" in this build's session`,
      spec.name,
    );
  }
  try {
    if (!(await stat(dir)).isDirectory()) throw new Error('not a directory');
  } catch (cause) {
    throw new LocalSourceError(
      'LOCAL_NOT_FOUND',
      `local "${spec.name}": ${dir} is not a readable directory`,
      spec.name,
      cause,
    );
  }
  return dir;
}

/** Copies the filtered local directory into `dest`. */
export async function copyLocal(spec: LocalSpec, dir: string, dest: string): Promise<void> {
  const includes = [...spec.includePatterns, ...spec.followPaths];
  await copyPath(dir, '/', dest, '/', {
    copyDirContents: true,
    ...(includes.length ? { includePatterns: includes } : {}),
    ...(spec.excludePatterns.length ? { excludePatterns: spec.excludePatterns } : {}),
  });
}
