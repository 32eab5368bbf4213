/**
 * Test helpers for conversion tests: convert with a fixed resolver, marshal, load the definition
 * back with @kiln/llb's validating parser, and look ops up by kind or step name.
 */
import { opKind, parseDefinition } from '@kiln/llb';
import type { Definition, OpKind, Platform } from '@kiln/llb';
import type { pb } from '@kiln/protocol';
import { convertDockerfile, marshalResult } from '../convert/convert.js';
import type {
  ConvertOptions,
  ConvertResult,
  ImageMetadata,
  MetaResolver,
} from '../convert/convert.js';

export interface InspectedOp {
  digest: string;
  kind: OpKind | undefined;
  op: pb.Op;
  /** The step name (llb.customname), '' when none. */
  name: string;
  description: Record<string, string>;
  metadata: pb.IOpMetadata | undefined;
  /** Digests of the inputs, in order. */
  inputs: string[];
}

export interface Inspected {
  result: ConvertResult;
  definition: Definition;
  /** Every op reachable from the result, inputs first. */
  ops: InspectedOp[];
  /** The op the definition evaluates to. */
  final: InspectedOp;
  ofKind(kind: OpKind): InspectedOp[];
  /** The one op (of `kind`, if given) whose step name contains `fragment`; throws unless exactly one. */
  named(fragment: string, kind?: OpKind): InspectedOp;
  byDigest(digest: string): InspectedOp;
  execs(): pb.IExecOp[];
}

export const DIGEST_A = 'sha256:' + 'a'.repeat(64);
export const LAYER = 'sha256:' + '1'.repeat(64);

/** An image config as a registry would serve it, for the given platform. */
export function imageConfig(
  platform: Platform,
  config: Record<string, unknown> = {},
  extra: Record<string, unknown> = {},
): object {
  return {
    created: '2024-01-01T00:00:00Z',
    architecture: platform.architecture,
    os: platform.os,
    ...(platform.variant ? { variant: platform.variant } : {}),
    config: {
      Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
      ...config,
    },
    rootfs: { type: 'layers', diff_ids: [LAYER] },
    history: [{ created: '2024-01-01T00:00:00Z', created_by: 'ADD rootfs.tar /' }],
    ...extra,
  };
}

/**
 * A resolver over configs defined by the test: `images[ref]` (refs normalized, `docker.io/library/
 * busybox:latest`) gives the `config` part; unknown refs fail like a registry's "not found".
 */
export function fixedResolver(
  images: Record<string, Record<string, unknown>> = {},
  calls?: string[],
): MetaResolver {
  return (ref: string, platform: Platform): Promise<ImageMetadata> => {
    calls?.push(`${ref} ${platform.os}/${platform.architecture}`);
    const cfg = images[ref] ?? (ref.startsWith('docker.io/library/busybox:') ? {} : undefined);
    if (cfg === undefined) return Promise.reject(new Error(`${ref}: not found`));
    return Promise.resolve({ ref, digest: DIGEST_A, config: imageConfig(platform, cfg) });
  };
}

export function inspect(result: ConvertResult, definition: Definition): Inspected {
  const loaded = parseDefinition(definition.toBytes());
  const ops: InspectedOp[] = loaded.order.map((digest) => {
    const l = loaded.ops.get(digest)!;
    const description = { ...(l.metadata?.description ?? {}) };
    return {
      digest,
      kind: opKind(l.op),
      op: l.op,
      name: description['llb.customname'] ?? '',
      description,
      metadata: l.metadata,
      inputs: l.op.inputs.map((i) => i.digest ?? ''),
    };
  });
  const byDigest = (d: string): InspectedOp => {
    const op = ops.find((o) => o.digest === d);
    if (!op) throw new Error(`no op ${d}`);
    return op;
  };
  return {
    result,
    definition,
    ops,
    final: byDigest(loaded.result.digest),
    ofKind: (kind) => ops.filter((o) => o.kind === kind),
    named(fragment, kind) {
      const found = ops.filter(
        (o) => o.name.includes(fragment) && (kind === undefined || o.kind === kind),
      );
      if (found.length !== 1)
        throw new Error(
          `${found.length} ops named like ${JSON.stringify(fragment)}: ${ops.map((o) => o.name).join(' | ')}`,
        );
      return found[0]!;
    },
    byDigest,
    execs: () => ops.filter((o) => o.kind === 'exec').map((o) => o.op.exec!),
  };
}

/** Converts with a busybox-only resolver by default, marshals (stable local id) and inspects. */
export async function convertInspect(
  dockerfile: string,
  opts: ConvertOptions = {},
): Promise<Inspected> {
  const result = await convertDockerfile(dockerfile, {
    metaResolver: fixedResolver(),
    targetPlatform: { os: 'linux', architecture: 'amd64' },
    ...opts,
  });
  return inspect(result, marshalResult(result, { localUniqueId: 'test' }));
}
