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
  /** Set for `ignore_cache` ops: the key is then private to this build. */
  nonce?: string;
}

export function fastKey(k: FastKeyInput): string {
  const h = createHash('sha256');
  for (const part of ['kiln-fast-key-v1', opCacheDigest(k.op), k.platform, k.nonce ?? '']) {
    h.update(part);
    h.update('\0');
  }
  for (const id of k.inputResultIds) {
    h.update(`input ${id}`);
    h.update('\0');
  }
  return `sha256:${h.digest('hex')}`;
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
