/**
 * `kiln ls [--filter F] [-v] [--format table|json]`: the farm's workers, as `buildx ls` lists a
 * builder's nodes and `buildctl debug workers` lists workers: id, status, slots (busy/total),
 * platforms (emulated ones marked `(emulated)`); `-v` adds labels, free disk and the last
 * heartbeat as `buildctl debug workers -v` blocks. Through `--addr` / `KILN_ADDR`, else the local
 * farm.
 */
import type { Command } from 'commander';
import { formatBytes } from '@kiln/common';
import type { WorkerRecord } from '@kiln/client';
import { formatPlatform, platformFromPb } from '@kiln/protocol';
import { BuildOptionError } from '../build-options.js';
import { connectFarm } from './farm-client.js';
import { ago, tabwrite } from './usage-table.js';

const collect = (v: string, prev: string[]): string[] => [...prev, v];

/** A worker whose last heartbeat is older than this is listed as `stale` (heartbeats are 1 s). */
export const STALE_AFTER_MS = 10_000;

export interface WorkerRow {
  id: string;
  status: 'running' | 'stale';
  slots: number;
  busySlots: number;
  platforms: string[];
  emulatedPlatforms: string[];
  labels: Record<string, string>;
  freeDiskBytes: number;
  lastHeartbeat: number;
}

function platforms(ps: WorkerRecord['platforms']): string[] {
  return (ps ?? []).flatMap((p) => {
    const platform = platformFromPb(p);
    return platform ? [formatPlatform(platform)] : [];
  });
}

export function workerRow(w: WorkerRecord, now = Date.now()): WorkerRow {
  const last = Number(w.lastHeartbeatUnixNano ?? 0) / 1e6;
  return {
    id: w.id,
    status: now - last > STALE_AFTER_MS ? 'stale' : 'running',
    slots: w.slots,
    busySlots: w.busySlots,
    platforms: platforms(w.platforms),
    emulatedPlatforms: platforms(w.emulatedPlatforms),
    labels: { ...(w.labels ?? {}) },
    freeDiskBytes: Number(w.freeDiskBytes ?? 0),
    lastHeartbeat: last,
  };
}

export function workersTable(rows: readonly WorkerRow[]): string {
  return tabwrite([
    ['ID', 'STATUS', 'SLOTS', 'PLATFORMS'],
    ...rows.map((r) => [
      r.id,
      r.status,
      `${r.busySlots}/${r.slots}`,
      [...r.platforms, ...r.emulatedPlatforms.map((p) => `${p} (emulated)`)].join(', '),
    ]),
  ]);
}

export function workersVerbose(rows: readonly WorkerRow[], now = Date.now()): string {
  return rows
    .map((r) => {
      const labels = Object.keys(r.labels)
        .sort()
        .map((k) => `\t${k}:\t${r.labels[k]}\n`)
        .join('');
      return (
        `ID:\t\t${r.id}\n` +
        `Status:\t\t${r.status}\n` +
        `Platforms:\t${r.platforms.join(',')}\n` +
        `Emulated:\t${r.emulatedPlatforms.join(',')}\n` +
        `Slots:\t\t${r.busySlots}/${r.slots}\n` +
        `Free disk:\t${formatBytes(r.freeDiskBytes)}\n` +
        `Heartbeat:\t${ago(r.lastHeartbeat, now)}\n` +
        `Labels:\n${labels}`
      );
    })
    .join('\n');
}

export function registerLs(program: Command): void {
  program
    .command('ls')
    .description("the farm's workers: id, status, slots, platforms (as buildx ls)")
    .option('-f, --filter <filter>', 'id==X or labels.K==V, repeatable', collect, [])
    .option('-v, --verbose', 'labels, free disk and last heartbeat of each worker')
    .option('--format <table|json>', 'output format', 'table')
    .option('--addr <host:port>', 'the farm to ask (default $KILN_ADDR, else the local farm)')
    .action(
      async (flags: { filter: string[]; verbose?: boolean; format: string; addr?: string }) => {
        if (flags.format !== 'table' && flags.format !== 'json')
          throw new BuildOptionError(`--format ${flags.format}: want table or json`);
        const farm = await connectFarm(flags.addr);
        try {
          const now = Date.now();
          const rows = (await farm.client.listWorkers(flags.filter)).map((w) => workerRow(w, now));
          process.stdout.write(
            flags.format === 'json'
              ? `${JSON.stringify(rows, null, 2)}\n`
              : flags.verbose
                ? workersVerbose(rows, now)
                : workersTable(rows),
          );
        } finally {
          await farm.close();
        }
      },
    );
}
