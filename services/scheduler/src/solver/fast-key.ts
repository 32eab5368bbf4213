/**
 * The scheduler's cache key of a vertex: BuildKit's "fast key", known before anything runs. It is
 * a digest of the op's cache digest (its definition with inputs stripped and result-neutral
 * fields cleared, `opCacheDigest` from `@kiln/llb`, the worker's own rules), the platform the op
 * runs on, and the result ids of its inputs in input order. Equal keys mean equal work, so the
 * Dispatcher runs a key once across every build. Content-based keys (a COPY keyed by the checksum
 * of the files it reads) need the data: the worker computes those and reports them with the
 * result; they are not part of this key.
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
