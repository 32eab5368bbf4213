/**
 * buildctl's disk usage output (`cmd/buildctl/diskusage.go`): a table `ID RECLAIMABLE SIZE LAST
 * ACCESSED` laid out as Go's tabwriter does with tabs as padding (minwidth 1, tabwidth 8,
 * padding 1), a mutable record's id marked `*`; `--verbose` prints `Key:\tvalue` blocks; the
 * summary is `Reclaimable:` and `Total:`. Sizes are two decimals of a decimal unit (`1.50MB`).
 */
import { formatBytes } from '@kiln/common';
import type { UsageRecord } from '@kiln/client';

/** Lays out lines of tab-terminated cells as Go's tabwriter with tab padding. */
export function tabwrite(lines: string[][]): string {
  const widths: number[] = [];
  for (const cells of lines)
    cells.slice(0, -1).forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  const col = (i: number): number => Math.ceil(((widths[i] ?? 0) + 1) / 8) * 8;
  return lines
    .map((cells) =>
      cells
        .map((c, i) =>
          i === cells.length - 1 ? c : c + '\t'.repeat(Math.ceil((col(i) - c.length) / 8)),
        )
        .join(''),
    )
    .map((l) => `${l}\n`)
    .join('');
}

const ms = (nanos: UsageRecord['createdAtUnixNano']): number => Number(nanos ?? 0) / 1e6;

export function tableHeader(): string[] {
  return ['ID', 'RECLAIMABLE', 'SIZE', 'LAST ACCESSED'];
}

export function tableRow(r: UsageRecord, now = Date.now()): string[] {
  const id = `${r.id}${r.mutable ? '*' : ''}`;
  const last = ms(r.lastUsedAtUnixNano);
  return [id.padEnd(71), String(!r.inUse).padEnd(11), formatBytes(Number(r.size)), ago(last, now)];
}

/** `35 seconds ago`, as docker prints times; empty when never used. */
export function ago(t: number, now = Date.now()): string {
  if (!t) return '';
  const s = Math.max(0, Math.round((now - t) / 1000));
  const units: [number, string][] = [
    [86_400, 'day'],
    [3_600, 'hour'],
    [60, 'minute'],
    [1, 'second'],
  ];
  for (const [n, name] of units)
    if (s >= n || n === 1) {
      const v = Math.floor(s / n);
      return `${v} ${name}${v === 1 ? '' : 's'} ago`;
    }
  return '';
}

/** A time as Go prints a time.Time (`2026-12-02 11:08:28.123 +0000 UTC`). */
function goTime(t: number): string {
  return `${new Date(t).toISOString().replace('T', ' ').replace('Z', '')} +0000 UTC`;
}

export function verbose(records: readonly UsageRecord[]): string {
  return records
    .map((r) => {
      const kv: string[][] = [['ID:', r.id]];
      for (const p of r.parents ?? []) kv.push(['Parent:', p]);
      kv.push(['Created at:', goTime(ms(r.createdAtUnixNano))]);
      kv.push(['Mutable:', String(r.mutable)]);
      kv.push(['Reclaimable:', String(!r.inUse)]);
      kv.push(['Size:', formatBytes(Number(r.size))]);
      if (r.description) kv.push(['Description:', r.description]);
      kv.push(['Usage count:', String(Number(r.usageCount ?? 0))]);
      const last = ms(r.lastUsedAtUnixNano);
      if (last) kv.push(['Last used:', goTime(last)]);
      return `${tabwrite(kv)}\n`;
    })
    .join('');
}

export function summary(records: readonly UsageRecord[]): string {
  let total = 0;
  let reclaimable = 0;
  for (const r of records) {
    const size = Number(r.size);
    if (size <= 0) continue;
    total += size;
    if (!r.inUse) reclaimable += size;
  }
  return tabwrite([
    ['Reclaimable:', formatBytes(reclaimable)],
    ['Total:', formatBytes(total)],
  ]);
}
