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
