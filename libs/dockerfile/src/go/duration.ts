/**
 * Go's `time.ParseDuration` and `Duration.String`, in nanoseconds (a JS number is exact up to
 * 2^53 ns, about 104 days: far beyond any healthcheck interval).
 */

const UNITS: Record<string, number> = {
  ns: 1,
  us: 1e3,
  µs: 1e3,
  μs: 1e3,
  ms: 1e6,
  s: 1e9,
  m: 60e9,
  h: 3600e9,
};

/** Go's `time.ParseDuration`; throws with Go's message for an invalid duration. */
export function parseGoDuration(s: string): number {
  const orig = s;
  const bad = (): Error => new Error(`time: invalid duration ${JSON.stringify(orig)}`);
  let neg = false;
  if (s.startsWith('-') || s.startsWith('+')) {
    neg = s.startsWith('-');
    s = s.slice(1);
  }
  if (s === '0') return 0;
  if (s === '') throw bad();
  let total = 0;
  while (s !== '') {
    const m = /^([0-9]*)(\.[0-9]*)?/.exec(s);
    const intPart = m?.[1] ?? '';
    const frac = m?.[2] ?? '';
    if (intPart === '' && (frac === '' || frac === '.')) throw bad();
    s = s.slice(intPart.length + frac.length);
    const u = /^[^0-9.]+/.exec(s)?.[0];
    if (u === undefined) throw new Error(`time: missing unit in duration ${JSON.stringify(orig)}`);
    const unit = UNITS[u];
    if (unit === undefined)
      throw new Error(
        `time: unknown unit ${JSON.stringify(u)} in duration ${JSON.stringify(orig)}`,
      );
    s = s.slice(u.length);
    total +=
      Number(intPart || '0') * unit + (frac.length > 1 ? Math.round(Number('0' + frac) * unit) : 0);
  }
  return neg ? -total : total;
}

function fmtFrac(v: bigint, prec: number): { rest: bigint; text: string } {
  // Go's fmtFrac: the fraction digits of v/10^prec without trailing zeros.
  let text = '';
  let print = false;
  for (let i = 0; i < prec; i++) {
    const digit = v % 10n;
    print = print || digit !== 0n;
    if (print) text = String(digit) + text;
    v /= 10n;
  }
  if (print) text = '.' + text;
  return { rest: v, text };
}

/** Go's `Duration.String`: `1h2m3.5s`, `1.5ms`, `0s`. */
export function formatGoDuration(ns: number): string {
  let u = BigInt(Math.trunc(ns));
  const neg = u < 0n;
  if (neg) u = -u;
  let out: string;
  if (u < 1_000_000_000n) {
    if (u === 0n) return '0s';
    let prec: number;
    let unit: string;
    if (u < 1000n) {
      prec = 0;
      unit = 'ns';
    } else if (u < 1_000_000n) {
      prec = 3;
      unit = 'µs';
    } else {
      prec = 6;
      unit = 'ms';
    }
    const { rest, text } = fmtFrac(u, prec);
    out = String(rest) + text + unit;
  } else {
    const { rest, text } = fmtFrac(u, 9);
    let secs = rest;
    out = String(secs % 60n) + text + 's';
    secs /= 60n;
    if (secs > 0n) {
      out = String(secs % 60n) + 'm' + out;
      secs /= 60n;
      if (secs > 0n) out = String(secs) + 'h' + out;
    }
  }
  return neg ? '-' + out : out;
}
