/**
 * The `dockerfile` frontend input of a Solve: a Definition whose file op writes the Dockerfile
 * (and its ignore file) with mkfile, which the scheduler reads without running anything.
 */
import { readDockerignore } from '@kiln/dockerfile/dockerignore';
import { marshal, mkfile, scratch } from '@kiln/llb';
import type { Definition } from '@kiln/llb';
import type { ManifestPatterns } from './session.js';

export function dockerfileInput(
  dockerfile: string | Uint8Array,
  o: {
    dockerignore?: string | Uint8Array;
    filename?: string;
    /**
     * The `.dockerignore` of each named context directory (`--build-context NAME=DIR`), by the
     * session's name for the directory (`local:NAME`): the frontend excludes what it names, as
     * BuildKit's frontend does with the ignore file it reads from that directory.
     */
    namedDockerignores?: Readonly<Record<string, string | Uint8Array>>;
  } = {},
): Definition {
  const name = o.filename ?? 'Dockerfile';
  let st = scratch().file(mkfile(`/${name}`, 0o644, dockerfile));
  if (o.dockerignore !== undefined)
    st = st.file(mkfile(`/${name}.dockerignore`, 0o644, o.dockerignore));
  for (const [local, data] of Object.entries(o.namedDockerignores ?? {}).sort(([a], [b]) =>
    a < b ? -1 : 1,
  ))
    st = st.file(mkfile(`/${namedDockerignorePath(local)}`, 0o644, data));
  return marshal(st);
}

/** Where a named context's ignore file travels in the `dockerfile` input. */
export function namedDockerignorePath(local: string): string {
  return `${NAMED_DOCKERIGNORE_PREFIX}${encodeURIComponent(local)}.dockerignore`;
}

/** The prefix of {@link namedDockerignorePath}. */
export const NAMED_DOCKERIGNORE_PREFIX = '.kiln-context-';

/**
 * The listing the Dockerfile frontend asks for first, to walk ahead (`SessionOptions.prefetch`):
 * the context directory with the ignore file's patterns, as BuildKit's dockerui asks for it.
 */
export function contextPrefetch(dockerignore?: string | Uint8Array): ManifestPatterns[] {
  return [{ dir: 'context', excludePatterns: dockerignore ? readDockerignore(dockerignore) : [] }];
}
