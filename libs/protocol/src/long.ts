import Long from 'long';

/** 64-bit integers as protobufjs represents them (`Long`), with conversions to plain JS values. */
export { Long };

export type Int64Like = number | bigint | Long | string;

/** Converts any 64-bit integer form to a signed Long; throws on non-integers. */
export function toLong(v: Int64Like): Long {
  if (Long.isLong(v)) return v;
  // From its two 32-bit halves (the low 64 bits, as the decimal parse wrapped), several times
  // cheaper than through a string: a context manifest converts one mtime per file.
  if (typeof v === 'bigint')
    return Long.fromBits(Number(v & 0xffffffffn) | 0, Number((v >> 32n) & 0xffffffffn) | 0, false);
  if (typeof v === 'string') return Long.fromString(v, false);
  if (!Number.isSafeInteger(v)) throw new RangeError(`not a safe integer: ${v}`);
  return Long.fromNumber(v, false);
}

/** A Long as a number when it is exactly representable, otherwise as a bigint. */
export function longToJs(v: Long | number): number | bigint {
  if (typeof v === 'number') return v;
  const n = v.toNumber();
  if (Number.isSafeInteger(n)) return n;
  return BigInt(v.toString());
}
