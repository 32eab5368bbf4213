/**
 * BuildKit's prune and du filters (`buildctl du --filter`, `buildctl prune --filter`): each filter
 * is `field==value`, `field=value`, `field!=value` or `field~=regexp`, over the record's `id`,
 * `type` (record type), `description`, `parent`, plus the bare conditions `inuse`, `mutable`,
 * `immutable`, `shared`, `private`. A record matches when every filter does. A filter that does
 * not parse is `GC_FILTER_INVALID`.
 */
import { KilnError } from '@kiln/protocol';
import type { GcUsageRecord } from '@kiln/bus';

export type RecordFilter = (r: GcUsageRecord) => boolean;

const FIELDS: Record<string, (r: GcUsageRecord) => string[]> = {
  id: (r) => [r.id],
  type: (r) => [r.recordType],
  recordtype: (r) => [r.recordType],
  description: (r) => [r.description],
  parent: (r) => r.parents,
  parents: (r) => r.parents,
};

const FLAGS: Record<string, RecordFilter> = {
  inuse: (r) => r.inUse,
  mutable: (r) => r.mutable,
  immutable: (r) => !r.mutable,
  shared: (r) => r.shared,
  private: (r) => !r.shared,
};

export class FilterInvalidError extends KilnError {
  constructor(filter: string, why: string) {
    super('GC_FILTER_INVALID', `filter ${JSON.stringify(filter)}: ${why}`, {
      details: { filter },
    });
  }
}

/** Compiles filters (each may hold several, comma-separated, as BuildKit's) into one predicate. */
export function compileFilters(filters: readonly string[]): RecordFilter {
  const preds: RecordFilter[] = [];
  for (const f of filters.flatMap((x) => x.split(',')).map((x) => x.trim())) {
    if (f === '') continue;
    const flag = FLAGS[f.toLowerCase()];
    if (flag) {
      preds.push(flag);
      continue;
    }
    const m = /^([a-zA-Z.]+)\s*(==|!=|~=|=)\s*(.*)$/.exec(f);
    if (!m) throw new FilterInvalidError(f, 'expected field==value, field!=value or field~=regexp');
    const [, field = '', op, value = ''] = m;
    const get = FIELDS[field.toLowerCase()];
    if (!get)
      throw new FilterInvalidError(f, `unknown field (known: ${Object.keys(FIELDS).join(', ')})`);
    if (op === '~=') {
      let re: RegExp;
      try {
        re = new RegExp(value);
      } catch (err) {
        throw new FilterInvalidError(f, (err as Error).message);
      }
      preds.push((r) => get(r).some((v) => re.test(v)));
    } else if (op === '!=') preds.push((r) => !get(r).includes(value));
    else preds.push((r) => get(r).includes(value));
  }
  return (r) => preds.every((p) => p(r));
}
