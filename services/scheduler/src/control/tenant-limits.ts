/**
 * Per-tenant RUN limits (`--tenant-limits`, `KILN_TENANT_LIMITS`): what the scheduler puts in
 * every task of a tenant's builds. A worker applies each capped by its own limit (its maximum),
 * so a tenant can be given less than the farm's workers allow, never more.
 */
import { InvalidQuantityError, parseDuration, parseSize } from '@kiln/common';
import { KilnError } from '@kiln/protocol';

/** A tenant's limits as the task carries them (`kiln.worker.v1.TaskLimits`); 0 is none. */
export interface TenantLimits {
  memoryBytes: number;
  pids: number;
  cpuShares: number;
  timeMs: number;
}

/** The tenant limits are written wrong. */
export class TenantLimitsInvalidError extends KilnError {
  constructor(message: string) {
    super('CONFIG_INVALID', `tenant limits: ${message}`, { details: { key: 'tenantLimits' } });
  }
}

const KEYS = {
  memory: { field: 'memoryBytes', parse: (v: string) => Math.floor(parseSize(v)) },
  pids: { field: 'pids', parse: (v: string) => count(v) },
  cpuShares: { field: 'cpuShares', parse: (v: string) => shares(v) },
  time: { field: 'timeMs', parse: (v: string) => parseDuration(v) },
} as const;

function count(v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n > 0xffffffff)
    throw new InvalidQuantityError(`expected a count, got "${v}"`);
  return n;
}

function shares(v: string): number {
  const n = count(v);
  if (n !== 0 && (n < 2 || n > 262144))
    throw new InvalidQuantityError(`CPU shares are 2..262144, got ${n}`);
  return n;
}

const TENANT_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/**
 * Parses entries `TENANT:key=value,key=value` (keys `memory` as `2GiB`, `pids`, `cpuShares`,
 * `time` as `30m`; 0 lifts the tenant's own limit), separated by `;` or given one per flag. A
 * tenant named twice, an unknown key or a bad value is {@link TenantLimitsInvalidError}.
 */
export function parseTenantLimits(entries: readonly string[]): Map<string, TenantLimits> {
  const out = new Map<string, TenantLimits>();
  for (const entry of entries.flatMap((e) => e.split(';')).map((e) => e.trim())) {
    if (entry === '') continue;
    const colon = entry.indexOf(':');
    const tenant = entry.slice(0, colon).trim();
    if (colon <= 0 || !TENANT_RE.test(tenant))
      throw new TenantLimitsInvalidError(`"${entry}": expected TENANT:key=value[,key=value]`);
    if (out.has(tenant)) throw new TenantLimitsInvalidError(`tenant ${tenant} is given twice`);
    const limits: TenantLimits = { memoryBytes: 0, pids: 0, cpuShares: 0, timeMs: 0 };
    for (const pair of entry.slice(colon + 1).split(',')) {
      const eq = pair.indexOf('=');
      const key = pair.slice(0, eq).trim();
      const spec = KEYS[key as keyof typeof KEYS] as (typeof KEYS)[keyof typeof KEYS] | undefined;
      if (eq <= 0 || spec === undefined)
        throw new TenantLimitsInvalidError(
          `tenant ${tenant}: "${pair}": keys are ${Object.keys(KEYS).join(', ')}`,
        );
      try {
        limits[spec.field] = spec.parse(pair.slice(eq + 1).trim());
      } catch (err) {
        throw new TenantLimitsInvalidError(`tenant ${tenant}: ${key}: ${(err as Error).message}`);
      }
    }
    out.set(tenant, limits);
  }
  return out;
}
