/**
 * Sizes and durations as people write them in flags, environment variables and config files,
 * the way BuildKit's tools take them (`--keep-storage`, `--keep-duration`, `gckeepstorage`).
 */

/**
 * A size or duration that does not parse. Callers turn it into their own typed error (a config
 * error, a flag error) with the setting's name.
 */
export class InvalidQuantityError extends Error {
  readonly code = 'INVALID_ARGUMENT';
  override readonly name = 'InvalidQuantityError';
}

const DURATION_UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

/** `30s`, `10m`, `1h30m`, `500ms`, `7d` (Go's durations plus days), or a number of seconds. */
export function parseDuration(s: string): number {
  const t = s.trim();
  if (/^\d+(\.\d+)?$/.test(t)) return Number(t) * 1000;
  let total = 0;
  let rest = t;
  if (!rest) throw new InvalidQuantityError(`not a duration: ${JSON.stringify(s)}`);
  while (rest) {
    const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)/.exec(rest);
    if (!m) throw new InvalidQuantityError(`not a duration: ${JSON.stringify(s)}`);
    total += Number(m[1]) * DURATION_UNITS[m[2]!]!;
    rest = rest.slice(m[0].length);
  }
  return Math.round(total);
}

const SIZE_UNITS: Record<string, number> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
  k: 1e3,
  m: 1e6,
  g: 1e9,
  t: 1e12,
};

/**
 * `512MB`, `2GB`, `1.5GiB`, `100kb`, or a plain number of megabytes (as buildctl's
 * `--keep-storage` and buildkitd's `gckeepstorage`). Decimal units are powers of 1000, `*iB`
 * powers of 1024. Returns bytes.
 */
export function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([a-zA-Z]*)$/.exec(s.trim());
  const unit = m?.[2]?.toLowerCase() ?? '';
  const mult = unit === '' ? 1e6 : SIZE_UNITS[unit];
  if (!m || mult === undefined)
    throw new InvalidQuantityError(`not a size: ${JSON.stringify(s)} (e.g. 512MB, 2GB)`);
  return Math.round(Number(m[1]) * mult);
}

/** Bytes as buildctl prints them: two decimals and a decimal unit (`1.50MB`, `0.00B`). */
export function formatBytes(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB', 'PB'];
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${v.toFixed(2)}${units[i]}`;
}
