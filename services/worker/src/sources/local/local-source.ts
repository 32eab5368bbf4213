/**
 * The `local://<name>` source: a directory the client hands in through its session, filtered by
 * the op's include/exclude patterns and followpaths. Its cache pin is the content checksum of what
 * passes the filters (file contents, modes and owners; never mtimes), so an unchanged context is a
 * cache hit whatever the random `local.unique` attribute says.
 */
import { stat } from 'node:fs/promises';
import { KilnError } from '@kiln/protocol';
import type { pb } from '@kiln/protocol';
import { checksum } from '../../cache/contenthash.js';
import { copyPath } from '../../fs/index.js';
import { PatternMatcher } from '../../fs/patterns.js';

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

/** The entry filter the op's patterns describe (include, then exclude; followpaths as includes). */
export function localFilter(
  spec: LocalSpec,
): ((rel: string, isDir: boolean) => boolean) | undefined {
  const includes = [...spec.includePatterns, ...spec.followPaths];
  const inc = includes.length ? new PatternMatcher(includes) : undefined;
  const exc = spec.excludePatterns.length ? new PatternMatcher(spec.excludePatterns) : undefined;
  if (!inc && !exc) return undefined;
  // Directories are kept by the checksum when anything below them is kept, so only entries are
  // judged here, with .dockerignore's rule (an entry matches when it or a parent matches).
  return (rel) => {
    if (exc?.matchesOrParentMatches(rel)) return false;
    if (inc && !inc.matchesOrParentMatches(rel)) return false;
    return true;
  };
}

/** The content pin of a local source. */
export async function localPin(spec: LocalSpec, dir: string): Promise<string> {
  const filter = localFilter(spec);
  return checksum(dir, '/', filter ? { filter } : {});
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
