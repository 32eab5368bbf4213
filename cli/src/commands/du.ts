/**
 * `kiln du [--filter F] [--verbose]`: the farm's build cache, every worker's records, printed as
 * `buildctl du` prints them (usage-table.ts). Through `--addr` / `KILN_ADDR`, else the local farm.
 */
import type { Command } from 'commander';
import { connectFarm } from './farm-client.js';
import { summary, tableHeader, tableRow, tabwrite, verbose } from './usage-table.js';

const collect = (v: string, prev: string[]): string[] => [...prev, v];

export function registerDu(program: Command): void {
  program
    .command('du')
    .description("disk usage of the farm's build cache (as buildctl du)")
    .option(
      '-f, --filter <filter>',
      'filter records (e.g. type==regular, id==X), repeatable',
      collect,
      [],
    )
    .option('-v, --verbose', 'verbose output')
    .option('--addr <host:port>', 'the farm to ask (default $KILN_ADDR, else the local farm)')
    .action(async (flags: { filter: string[]; verbose?: boolean; addr?: string }) => {
      const farm = await connectFarm(flags.addr);
      try {
        const records = await farm.client.diskUsage(flags.filter);
        const now = Date.now();
        let out = flags.verbose
          ? verbose(records)
          : tabwrite([tableHeader(), ...records.map((r) => tableRow(r, now).concat(''))]);
        if (flags.filter.length === 0) out += summary(records);
        process.stdout.write(out);
      } finally {
        await farm.close();
      }
    });
}
