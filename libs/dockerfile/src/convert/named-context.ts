/**
 * Named contexts (BuildKit's dockerui NamedContext, the frontend attributes `context:NAME` and
 * `context:NAME::PLATFORM` that `--build-context` sets): a stage, a FROM image or a `COPY --from`
 * image replaced by another source. Values: `docker-image://REF` (its config is resolved as a
 * base image's), `local:NAME` (a directory of the client's session), a git URL (`git@`, `git://`,
 * or an http(s) URL of a repository), an http(s) URL of a file. `oci-layout://` needs a content
 * store in the client's session, which Kiln's session does not serve: an error that says so.
 */
import { formatPlatform, git, http, local, parseImageReference, scratch } from '@kiln/llb';
import type { Platform, State } from '@kiln/llb';
import { parseGitRef } from './git-ref.js';

export const NAMED_CONTEXT_PREFIX = 'context:';

/** What a named context replaces a stage or image with. */
export type NamedContext =
  /** An image: resolved through the metadata resolver, then used as a base image is. */
  | { kind: 'image'; ref: string; customName: string }
  /** Any other source: its files, with no image config. */
  | { kind: 'state'; state: State };

/** `alpine`, `alpine:3.17`, `example.com/x/y@sha256:...`: the reference as docker prints it, without `:latest`. */
export function familiarImageName(name: string): string {
  const r = parseImageReference(name);
  let path = `${r.domain}/${r.path}`;
  if (r.domain === 'docker.io') {
    path =
      r.path.startsWith('library/') && r.path.split('/').length === 2 ? r.path.slice(8) : r.path;
  }
  const full = `${path}${r.tag !== undefined ? `:${r.tag}` : ''}${r.digest !== undefined ? `@${r.digest}` : ''}`;
  return full.endsWith(':latest') ? full.slice(0, -':latest'.length) : full;
}

/**
 * The named context for `name` (a stage name or an image reference) on `platform`, if the attrs
 * give one: `NAME::os/arch` first, then `NAME`. Throws on a value that names no known source.
 */
export function findNamedContext(
  contexts: Readonly<Record<string, string>>,
  name: string,
  platform: Platform,
  sessionId: string | undefined,
  excludes: Readonly<Record<string, readonly string[]>> = {},
): NamedContext | undefined {
  if (Object.keys(contexts).length === 0) return undefined;
  let familiar: string;
  try {
    familiar = familiarImageName(name);
  } catch (err) {
    throw new Error(`invalid context name ${name}: ${(err as Error).message}`, { cause: err });
  }
  for (const key of [`${familiar}::${formatPlatform(platform)}`, familiar]) {
    const v = contexts[key];
    if (v !== undefined) return namedContext(key, v, sessionId, excludes);
  }
  return undefined;
}

function namedContext(
  nameWithPlatform: string,
  v: string,
  sessionId: string | undefined,
  excludes: Readonly<Record<string, readonly string[]>>,
): NamedContext {
  const colon = v.indexOf(':');
  if (colon < 0) throw new Error(`invalid context specifier ${v} for ${nameWithPlatform}`);
  // `git@host:repo` without a scheme is a git URL, as in BuildKit.
  const scheme = v.startsWith('git@') ? 'git' : v.slice(0, colon);
  const rest = v.slice(colon + 1);
  const customName = `[context ${nameWithPlatform}] `;
  switch (scheme) {
    case 'docker-image': {
      const ref = rest.replace(/^\/\//, '');
      if (ref === 'scratch') return { kind: 'state', state: scratch() };
      return { kind: 'image', ref, customName: customName + ref };
    }
    case 'git':
    case 'http':
    case 'https': {
      const g = parseGitRef(v, false);
      if (g) {
        if (g.checksum !== '')
          throw new Error(`context ${nameWithPlatform}: a git checksum is not supported yet`);
        const ref = g.subDir !== '' ? `${g.ref}:${g.subDir}` : g.ref;
        return {
          kind: 'state',
          state: git(g.remote, ref, {
            keepGitDir: g.keepGitDir === true,
            customName: customName + v,
          }),
        };
      }
      if (scheme === 'git') throw new Error(`invalid git context ${v}`);
      return { kind: 'state', state: http(v, { customName: customName + v }) };
    }
    case 'local': {
      const exclude = excludes[rest] ?? [];
      return {
        kind: 'state',
        state: local(rest, {
          customName: `${customName}load from client`,
          sharedKeyHint: `context:${nameWithPlatform}`,
          ...(sessionId ? { sessionId } : {}),
          ...(exclude.length > 0 ? { excludePatterns: [...exclude] } : {}),
        }),
      };
    }
    case 'oci-layout':
      throw new Error(
        `context ${nameWithPlatform}: oci-layout contexts are not supported (the farm cannot read the client's OCI layout); push the image to a registry and use docker-image://REF`,
      );
    default:
      throw new Error(`unsupported context source ${scheme} for ${nameWithPlatform}`);
  }
}
