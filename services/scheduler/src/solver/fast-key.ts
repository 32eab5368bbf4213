/**
 * The scheduler's cache key of a vertex: BuildKit's "fast key", known before anything runs. It is
 * a digest of the op's cache digest (its definition with inputs stripped and result-neutral
 * fields cleared, `opCacheDigest` from `@kiln/llb`, the worker's own rules), the platform the op
 * runs on, and the result ids of its inputs in input order. Equal keys mean equal work, so the
 * Dispatcher runs a key once across every build.
 *
 * Keys are content-based through the result ids: a result id is the chain of its layers' diffIDs,
 * computed by the worker that made it and reported back. A source whose content can change behind
 * the same op (a local directory, an image tag, a git branch, an http URL without checksum) is
 * resolved again by a worker in every build ({@link volatileSource}: its key carries the build
 * id); when its content is unchanged, its result id is too, and everything that depends on it is a
 * cache hit. So a changed context file reruns only the vertices whose inputs' content changed.
 * A local source whose client directory the scheduler synced first is keyed by that content
 * instead (the manifest's digest, {@link contentKeyedOp}): unchanged, it is a cache hit itself,
 * with no task.
 *
 * Selector-level (v2): an input the op reads only through selectors (a COPY source, a read-only
 * mount of a subpath: `depSpecs(op)[i].contentBased`) is keyed by the content checksum of just
 * those paths when the worker holding it answered one ({@link ContentDep}), as BuildKit keys it;
 * otherwise by its result id, as every other input. `COPY package.json` thus stays a cache hit
 * when another context file changes. Both forms are correct; they only differ in how often they
 * meet, and never collide (`content` and `input` entries are tagged).
 *
 * Tenants: a key carries the build's cache namespace (its tenant's, unless the farm shares its
 * cache), so one tenant never gets another's result for the same op, nor its cache mounts.
 */
import { createHash } from 'node:crypto';
import { opCacheDigest } from '@kiln/llb';
import type { pb } from '@kiln/protocol';

export interface FastKeyInput {
  op: pb.IOp;
  /** `os/arch[/variant]` the op runs on (its own platform, or the build's default). */
  platform: string;
  /** Result id of each op input, in input order. */
  inputResultIds: readonly string[];
  /**
   * Per input (same order): the content checksum of the paths the op reads in it, for inputs read
   * only through selectors whose holder answered one; undefined entries (or none at all) use the
   * input's result id.
   */
  contentDeps?: readonly (ContentDep | undefined)[];
  /** Set for `ignore_cache` ops: the key is then private to this build. */
  nonce?: string;
  /**
   * The tenant's cache namespace: keys (and so task records and results) of different
   * namespaces never meet. '' or absent: the farm's shared cache.
   */
  namespace?: string;
}

/** What a content-based input contributes to a key instead of its result id. */
export interface ContentDep {
  /** The checksum of the selected paths (`kiln.checksum` reply, `@kiln/bus`). */
  digest: string;
  /** The paths it covers (`DepSpec.selectors`). */
  selectors: readonly string[];
  /**
   * BuildKit's contenthash of the same paths, when asked for (cache import or export) and
   * reproducible: the content link of BuildKit's cache formats (`buildkit-nodes.ts`), never
   * part of the key.
   */
  buildkitDigest?: string;
}

export function fastKey(k: FastKeyInput): string {
  const h = createHash('sha256');
  if (k.namespace) h.update(`namespace ${k.namespace}\0`);
  const parts = ['kiln-fast-key-v2', opCacheDigest(k.op), mountSelectors(k.op), k.platform];
  for (const part of [...parts, k.nonce ?? '']) {
    h.update(part);
    h.update('\0');
  }
  k.inputResultIds.forEach((id, i) => {
    const c = k.contentDeps?.[i];
    h.update(c ? `content ${c.digest} ${c.selectors.join('\u0001')}` : `input ${id}`);
    h.update('\0');
  });
  return `sha256:${h.digest('hex')}`;
}

/**
 * `opCacheDigest` clears exec mount selectors (content-based deps key them by checksum); a
 * key made of result ids must carry them itself, or two execs mounting different subpaths of one
 * input would meet on one key.
 */
function mountSelectors(op: pb.IOp): string {
  return (op.exec?.mounts ?? [])
    .filter((m) => m.selector)
    .map((m) => `${String(m.input ?? 0)} ${m.dest ?? ''} ${m.selector ?? ''}`)
    .join('\u0001');
}

/** Attributes of a local source that name a session or a marshal, not what it reads. */
const LOCAL_SESSION_ATTRS = ['local.session', 'local.unique', 'local.sharedkeyhint'];

/**
 * A local source op as keyed by its content (`localContent` of the solver): without the
 * attributes that differ in every build (its session, BuildKit's unique id), which the content's
 * digest stands for.
 */
export function contentKeyedOp(op: pb.IOp): pb.IOp {
  const attrs = { ...(op.source?.attrs ?? {}) };
  for (const k of LOCAL_SESSION_ATTRS) delete attrs[k];
  return { ...op, source: { ...op.source, attrs } };
}

/**
 * Whether a source op's content may change while the op stays the same, so that it must be
 * resolved in every build: everything but digest-pinned images and http sources with a checksum.
 */
export function volatileSource(op: pb.IOp): boolean {
  const src = op.source;
  if (!src) return false;
  const id = src.identifier ?? '';
  if (id.startsWith('docker-image://')) return !/@sha256:[a-f0-9]{64}$/.test(id);
  if (id.startsWith('http://') || id.startsWith('https://')) return !src.attrs?.['http.checksum'];
  return true;
}
