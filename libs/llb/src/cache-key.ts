/**
 * Cache keys, after BuildKit's model. A vertex's key is a digest over
 *   - the op's own definition without its input edges (so a key never depends on how an input was
 *     produced, only on what it is), with fields that cannot change the result removed (exec mount
 *     selectors, which are keyed through the deps instead; proxy env);
 *   - one dep per op input: the input's own cache key, or, when the op reads the input only through
 *     selectors (a COPY source, a read-only mount of a subpath), the content checksum of those paths.
 * Source ops have no inputs; their key is the source's pin (image manifest digest, content
 * checksum of a local dir, git commit, http content digest), computed by the source executor.
 * Keys are `sha256:<hex>` strings and never contain secret values (secret mounts contribute only
 * their id and target, which are in the op).
 */
import { createHash } from 'node:crypto';
import { pb } from '@kiln/protocol';

/** How an op reads one of its inputs. */
export interface DepSpec {
  /** Paths the op reads in this input; empty: the whole input. */
  selectors: string[];
  /** Key the dep by the content checksum of the selectors rather than by the input's key. */
  contentBased: boolean;
  wildcard: boolean;
  followLinks: boolean;
  includePatterns: string[];
  excludePatterns: string[];
}

/** What a dep contributes to a key, once computed. */
export interface DepKey {
  /** The input's cache key (used when the dep is not content based). */
  inputKey: string;
  /** The content checksum of the selected paths (content-based deps). */
  contentDigest?: string;
  selectors: string[];
}

const num = (v: number | { toNumber(): number } | null | undefined): number =>
  v == null ? 0 : typeof v === 'number' ? v : v.toNumber();

function sha(...parts: string[]): string {
  const h = createHash('sha256');
  for (const p of parts) {
    h.update(p);
    h.update('\0');
  }
  return `sha256:${h.digest('hex')}`;
}

/** The digest of an op's definition for keying: inputs stripped, result-neutral fields cleared. */
export function opCacheDigest(op: pb.IOp): string {
  const copy = pb.Op.decode(pb.Op.encode(op).finish());
  copy.inputs = [];
  if (copy.exec) {
    for (const m of copy.exec.mounts ?? []) m.selector = '';
    if (copy.exec.meta) copy.exec.meta.proxyEnv = null;
  }
  return sha('op', Buffer.from(pb.Op.encode(copy).finish()).toString('base64'));
}

/** How each input of `op` is read (BuildKit's CacheMap deps). */
export function depSpecs(op: pb.IOp): DepSpec[] {
  const n = (op.inputs ?? []).length;
  const deps: DepSpec[] = Array.from({ length: n }, () => ({
    selectors: [],
    contentBased: true,
    wildcard: false,
    followLinks: false,
    includePatterns: [],
    excludePatterns: [],
  }));
  const whole = (i: number): void => {
    const d = deps[i];
    if (d) d.contentBased = false;
  };
  if (op.exec) {
    for (const m of op.exec.mounts ?? []) {
      const i = num(m.input);
      if (i < 0 || !deps[i]) continue;
      // Only read-only mounts of a subpath can be keyed by content: a writable mount or the root
      // filesystem carries everything into the result.
      if (m.readonly && m.selector) deps[i].selectors.push(m.selector);
      else whole(i);
    }
  } else if (op.file) {
    const actions = op.file.actions ?? [];
    for (const a of actions) {
      const input = num(a.input);
      if (input >= 0 && input < n) whole(input);
      const sec = num(a.secondaryInput);
      if (a.copy && sec >= 0 && sec < n) {
        const d = deps[sec]!;
        d.selectors.push(a.copy.src ?? '/');
        d.wildcard ||= Boolean(a.copy.allowWildcard);
        d.followLinks ||= Boolean(a.copy.followSymlink);
        d.includePatterns.push(...(a.copy.includePatterns ?? []));
        d.excludePatterns.push(...(a.copy.excludePatterns ?? []));
      } else if (sec >= 0 && sec < n) whole(sec);
      const owner = a.copy?.owner ?? a.mkdir?.owner ?? a.mkfile?.owner ?? a.symlink?.owner;
      for (const u of [owner?.user, owner?.group]) {
        // A chown by name reads /etc/passwd and /etc/group of that input.
        const byName = u?.byName;
        if (byName) {
          const i = num(byName.input);
          if (i >= 0 && i < n) deps[i]!.selectors.push('/etc/passwd', '/etc/group');
        }
      }
    }
  } else {
    for (let i = 0; i < n; i++) whole(i);
  }
  for (const d of deps) if (d.selectors.length === 0) d.contentBased = false;
  return deps;
}

/** The key of a vertex from its op digest and its deps' contributions. */
export function vertexCacheKey(opDigest: string, deps: DepKey[]): string {
  const parts = ['vertex', opDigest];
  for (const d of deps) {
    parts.push(
      d.contentDigest !== undefined
        ? `content ${d.contentDigest} ${d.selectors.join('\u0001')}`
        : `key ${d.inputKey}`,
    );
  }
  return sha(...parts);
}

/** The key of one output of a vertex. */
export function outputCacheKey(vertexKey: string, index: number): string {
  return index === 0 ? vertexKey : sha('output', vertexKey, String(index));
}

/** The key of a source op, from its identifier, attributes that change content, and its pin. */
export function sourceCacheKey(opDigestNoUnique: string, pin: string): string {
  return sha('source', opDigestNoUnique, pin);
}

/** Source attributes that identify a session or a marshal, not content: never part of a key. */
const VOLATILE_SOURCE_ATTRS = new Set(['local.unique', 'local.session', 'local.sharedkeyhint']);

/** The digest of a source op for keying: its identifier and content-relevant attributes. */
export function sourceOpDigest(op: pb.IOp): string {
  const attrs = Object.entries(op.source?.attrs ?? {})
    .filter(([k]) => !VOLATILE_SOURCE_ATTRS.has(k))
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`);
  const p = op.platform;
  return sha(
    'source-op',
    op.source?.identifier ?? '',
    p ? `${p.OS}/${p.Architecture}/${p.Variant ?? ''}` : '',
    ...attrs,
  );
}
