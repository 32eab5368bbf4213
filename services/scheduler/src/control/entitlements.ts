/**
 * Entitlements at solve time, as BuildKit's solver checks them: an op needing `security.insecure`
 * or `network.host` runs only if the client asked for the entitlement (SolveRequest.entitlements,
 * `kiln build --allow`) and the farm allows it to the caller's tenant (`--allow-insecure-
 * entitlement`, or the tenant's entry in the tokens file). Checked over every vertex before
 * anything is dispatched, so a refused build runs nothing.
 */
import { ENTITLEMENTS, isEntitlement, opEntitlements } from '@kiln/llb';
import type { Entitlement, LoadedDefinition } from '@kiln/llb';
import { KilnError, registerErrorClass } from '@kiln/protocol';
import type { ErrorDetails, pb } from '@kiln/protocol';
import { SolveRequestInvalidError } from '../solver/errors.js';
import { vertexName } from '../solver/solve.js';
import type { Caller } from './auth.js';

export class EntitlementDeniedError extends KilnError {
  constructor(message: string, details: ErrorDetails) {
    super('ENTITLEMENT_DENIED', message, { details });
  }
}
registerErrorClass('ENTITLEMENT_DENIED', (m, d) => new EntitlementDeniedError(m, d));

/** `start-end,...`: the source lines (e.g. of the Dockerfile) of a vertex, or ''. */
export function sourceLines(source: pb.ISource | null | undefined, digest: string): string {
  return (source?.locations?.[digest]?.locations ?? [])
    .flatMap((l) =>
      (l.ranges ?? []).map((r) => {
        const start = r.start?.line ?? 0;
        return `${start}-${r.end?.line ?? start}`;
      }),
    )
    .join(',');
}

/** The client's requested entitlements, validated. */
export function requestedEntitlements(names: readonly string[]): Set<Entitlement> {
  const out = new Set<Entitlement>();
  for (const n of names) {
    if (!isEntitlement(n))
      throw new SolveRequestInvalidError(
        `unknown entitlement ${JSON.stringify(n)} (known: ${ENTITLEMENTS.join(', ')})`,
        { entitlement: n },
      );
    out.add(n);
  }
  return out;
}

/**
 * Throws {@link EntitlementDeniedError} for the first vertex needing an entitlement that was not
 * asked for or is not allowed, naming it and its source lines; then for an entitlement asked for
 * that the farm does not allow (as buildkitd refuses it even unused).
 */
export function checkEntitlements(
  targets: readonly { graph: LoadedDefinition; source?: pb.ISource | null | undefined }[],
  requested: ReadonlySet<Entitlement>,
  caller: Caller,
): void {
  for (const t of targets) {
    for (const digest of t.graph.order) {
      const lo = t.graph.ops.get(digest);
      if (!lo) continue;
      for (const e of opEntitlements(lo.op)) {
        if (requested.has(e) && caller.allowed.has(e)) continue;
        const lines = sourceLines(t.source, digest);
        const name = vertexName(lo);
        const [start = '', end = start] = lines.split(',')[0]!.split('-');
        const where = !lines ? '' : start === end ? ` (line ${start})` : ` (lines ${start}-${end})`;
        const why = !requested.has(e)
          ? `the build did not ask for it: pass --allow ${e} to kiln build`
          : `the farm does not allow it for tenant ${caller.tenant} (scheduler --allow-insecure-entitlement ${e}, or the tenant's entry in the tokens file)`;
        throw new EntitlementDeniedError(`${name}${where} needs entitlement ${e}: ${why}`, {
          entitlement: e,
          digest,
          vertex: name,
          ...(lines ? { sourceLines: lines } : {}),
        });
      }
    }
  }
  for (const e of requested)
    if (!caller.allowed.has(e))
      throw new EntitlementDeniedError(
        `entitlement ${e} is not allowed by this farm for tenant ${caller.tenant} (scheduler --allow-insecure-entitlement ${e})`,
        { entitlement: e },
      );
}
