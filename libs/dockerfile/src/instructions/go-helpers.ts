/** Small ports of the Go helpers the instruction parser relies on. */

/**
 * `encoding/csv` reading one record (the `--mount` value): comma-separated fields, a field in
 * double quotes may hold commas and `""` for a quote. Throws on a bare quote, as Go does.
 */
export function readCsvRecord(line: string): string[] {
  const fields: string[] = [];
  let i = 0;
  for (;;) {
    if (line[i] === '"') {
      let field = '';
      i++;
      for (;;) {
        if (i >= line.length) throw new Error('extraneous or missing " in quoted-field');
        const c = line[i]!;
        if (c === '"') {
          if (line[i + 1] === '"') {
            field += '"';
            i += 2;
            continue;
          }
          i++;
          break;
        }
        field += c;
        i++;
      }
      if (i < line.length && line[i] !== ',')
        throw new Error('extraneous or missing " in quoted-field');
      fields.push(field);
    } else {
      let j = line.indexOf(',', i);
      if (j < 0) j = line.length;
      const field = line.slice(i, j);
      if (field.includes('"')) throw new Error('bare " in non-quoted-field');
      fields.push(field);
      i = j;
    }
    if (i >= line.length) break;
    i++; // the comma
  }
  return fields;
}

/** Go's `strconv.ParseBool`. */
export function parseGoBool(v: string): boolean {
  if (['1', 't', 'T', 'TRUE', 'true', 'True'].includes(v)) return true;
  if (['0', 'f', 'F', 'FALSE', 'false', 'False'].includes(v)) return false;
  throw new Error(`strconv.ParseBool: parsing ${JSON.stringify(v)}: invalid syntax`);
}

/** `strconv.ParseUint(v, base, 32)`; undefined when invalid or out of range. */
export function parseUint32(v: string, base: 8 | 10): number | undefined {
  const re = base === 8 ? /^[0-7]+$/ : /^[0-9]+$/;
  if (!re.test(v)) return undefined;
  const n = parseInt(v, base);
  return n > 0xffffffff ? undefined : n;
}

/** `strconv.ParseInt(v, 10, 32)`; undefined when invalid or out of range. */
export function parseInt32(v: string): number | undefined {
  if (!/^[+-]?[0-9]+$/.test(v)) return undefined;
  const n = parseInt(v, 10);
  return n > 0x7fffffff || n < -0x80000000 ? undefined : n;
}

/**
 * docker/go-units `RAMInBytes`: `64m`, `1g`, `512k`, `1.5GiB`, a bare number of bytes; binary
 * multipliers.
 */
export function ramInBytes(size: string): number {
  const m = /^(\d+(\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$/.exec(size);
  if (!m) throw new Error(`invalid size: '${size}'`);
  const n = Number(m[1]);
  if (Number.isNaN(n)) throw new Error(`invalid size: '${size}'`);
  const mult: Record<string, number> = {
    k: 1024,
    m: 1024 ** 2,
    g: 1024 ** 3,
    t: 1024 ** 4,
    p: 1024 ** 5,
  };
  const unit = m[3]?.toLowerCase();
  return Math.trunc(n * (unit ? mult[unit]! : 1));
}

/**
 * Whether a symbolic file mode (`u+x,g-w`, `a=rX`, `go=u`) is valid, as the `dchapes-mode` parser
 * BuildKit uses for `--chmod` accepts it.
 */
export function isSymbolicMode(s: string): boolean {
  if (s === '') return false;
  return s.split(',').every((clause) => /^[ugoa]*([-+=]([rwxXst]*|[ugo]))+$/.test(clause));
}

/** Levenshtein distance, for "did you mean" hints (BuildKit's util/suggest). */
function distance(a: string, b: string): number {
  const d: number[] = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = d[0]!;
    d[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = d[j]!;
      d[j] = Math.min(d[j]! + 1, d[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return d[b.length]!;
}

/** The closest option to `value`, if close enough to be a likely typo (util/suggest.Search). */
export function suggest(
  value: string,
  options: readonly string[],
  caseSensitive: boolean,
): string | undefined {
  const v = caseSensitive ? value : value.toLowerCase();
  let best: string | undefined;
  let bestDist = Infinity;
  for (const o of options) {
    const oo = caseSensitive ? o : o.toLowerCase();
    if (oo === v) return undefined;
    const dist = distance(v, oo);
    if (dist < bestDist) {
      bestDist = dist;
      best = o;
    }
  }
  const max = v.length <= 3 ? 1 : 2;
  return bestDist <= max ? best : undefined;
}

/** `msg (did you mean X?)` when a close option exists. */
export function withSuggestion(
  msg: string,
  value: string,
  options: readonly string[],
  caseSensitive: boolean,
): string {
  const s = suggest(value, options, caseSensitive);
  return s === undefined ? msg : `${msg} (did you mean ${s}?)`;
}
