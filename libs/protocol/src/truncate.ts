/**
 * Bounding text that crosses a wire or lands in a log: a name, an error message, a log field.
 * What is cut is said in place, so a reader never mistakes a cut text for the whole.
 */

/** The marker that replaces what was cut: `…[12345 characters truncated]…`. */
export function truncationMarker(cut: number): string {
  return `…[${cut} characters truncated]…`;
}

/**
 * `s` when it has at most `max` characters; else its head and its tail (a quarter of the room)
 * around a marker, `max` characters or fewer in all (the tail of an error often says most).
 */
export function truncateMiddle(s: string, max: number): string {
  if (s.length <= max) return s;
  const room = Math.max(0, max - truncationMarker(s.length).length);
  const tail = Math.floor(room / 4);
  const head = room - tail;
  return s.slice(0, head) + truncationMarker(s.length - head - tail) + (tail ? s.slice(-tail) : '');
}

/** A log field's bound (a log line holds a few). */
export const MAX_LOG_FIELD = 8 * 1024;

/**
 * A log record's fields with every string (and an error's message and stack) cut to `max` with a
 * marker: pino's `formatters.log`, so that no build can write megabyte log lines through a name
 * or an error it controls. Shallow: nested objects are logged as they are.
 */
export function boundLogFields(
  obj: Record<string, unknown>,
  max = MAX_LOG_FIELD,
): Record<string, unknown> {
  let out: Record<string, unknown> | undefined;
  for (const [k, v] of Object.entries(obj)) {
    let b: unknown = v;
    if (typeof v === 'string' && v.length > max) b = truncateMiddle(v, max);
    else if (v instanceof Error && (v.message.length > max || (v.stack?.length ?? 0) > max)) {
      const e = Object.assign(Object.create(Object.getPrototypeOf(v) as object) as Error, v);
      e.message = truncateMiddle(v.message, max);
      e.stack = truncateMiddle(v.stack ?? '', max);
      b = e;
    }
    if (b !== v) (out ??= { ...obj })[k] = b;
  }
  return out ?? obj;
}
