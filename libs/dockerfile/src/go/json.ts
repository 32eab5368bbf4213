/**
 * Go's `json.Unmarshal` into `any`, as far as BuildKit's use of it shows: a syntax error, nesting
 * deeper than 10000 or a number beyond float64 all fail (JSON.parse would accept the last two).
 */

/** Go's JSON scanner rejects nesting deeper than this. */
const MAX_JSON_DEPTH = 10000;

function depthExceeded(text: string): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === '[' || c === '{') {
      if (++depth > MAX_JSON_DEPTH) return true;
    } else if (c === ']' || c === '}') depth--;
  }
  return false;
}

/** Walks a parsed value without recursion (it may be 10000 levels deep). */
function hasNonFiniteNumber(value: unknown): boolean {
  const stack: unknown[] = [value];
  while (stack.length > 0) {
    const v = stack.pop();
    if (typeof v === 'number' && !Number.isFinite(v)) return true;
    if (Array.isArray(v)) for (const x of v as unknown[]) stack.push(x);
    else if (v !== null && typeof v === 'object') for (const x of Object.values(v)) stack.push(x);
  }
  return false;
}

/** The decoded value, or an error message where Go's decoder would fail. */
export function goJsonParse(
  text: string,
): { ok: true; value: unknown } | { ok: false; error: string } {
  if (depthExceeded(text)) return { ok: false, error: 'exceeded max depth' };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return { ok: false, error: err instanceof Error ? err.message : String(err) };
  }
  if (hasNonFiniteNumber(value)) return { ok: false, error: 'number out of range' };
  return { ok: true, value };
}
