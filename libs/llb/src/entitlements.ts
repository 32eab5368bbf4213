/**
 * BuildKit's entitlements: what an op may do beyond the default sandbox. An op needing one runs
 * only when the client asks for it (`kiln build --allow`, `buildctl --allow`) and the farm allows
 * it (`--allow-insecure-entitlement`, buildkitd's flag of that name).
 */
import { pb } from '@kiln/protocol';

export const ENTITLEMENTS = ['security.insecure', 'network.host'] as const;
export type Entitlement = (typeof ENTITLEMENTS)[number];

export function isEntitlement(s: string): s is Entitlement {
  return (ENTITLEMENTS as readonly string[]).includes(s);
}

/** The entitlements an op needs: an exec with `security=insecure` and/or `network=host`. */
export function opEntitlements(op: pb.IOp): Entitlement[] {
  const e = op.exec;
  if (!e) return [];
  const out: Entitlement[] = [];
  if (e.security === pb.SecurityMode.INSECURE) out.push('security.insecure');
  if (e.network === pb.NetMode.HOST) out.push('network.host');
  return out;
}
