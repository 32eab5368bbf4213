/**
 * `kiln prune [--all] [--keep-storage SIZE] [--keep-duration DUR] [--filter F] [--verbose]`:
 * removes build cache from every worker of the farm (each keeps what a running build holds and
 * what was used within its GC grace period) and prints what went, as `buildctl prune` does:
 * the removed records, then `Total:` freed.
 */
import type { Command } from 'commander';
import { InvalidQuantityError, formatBytes, parseDuration, parseSize } from '@kiln/common';
import type { UsageRecord } from '@kiln/client';
import { BuildOptionError } from '../build-options.js';
import { connectFarm } from './farm-client.js';
import { tableHeader, tableRow, tabwrite, verbose } from './usage-table.js';

const collect = (v: string, prev: string[]): string[] => [...prev, v];

function quantity(flag: string, v: string | undefined, parse: (s: string) => number): number {
  if (v === undefined) return 0;
  try {
    return parse(v);
  } catch (err) {
    if (err instanceof InvalidQuantityError) throw new BuildOptionError(`${flag}: ${err.message}`);
    throw err;
  }
}

export function registerPrune(program: Command): void {
  program
    .command('prune')
    .description("clean up the farm's build cache (as buildctl prune)")
    .option('--all', 'remove every record not in use, the grace period ignored')
    .option(
      '--keep-storage <size>',
      'keep data below this size per worker (2GB, 512MB; a plain number is MB)',
    )
    .option('--keep-duration <duration>', 'keep data used more recently than this (e.g. 48h, 30m)')
    .option(
      '-f, --filter <filter>',
      'filter records (e.g. type==regular, id==X), repeatable',
      collect,
      [],
    )
    .option('-v, --verbose', 'verbose output')
    .option('--addr <host:port>', 'the farm to prune (default $KILN_ADDR, else the local farm)')
    .action(
      async (flags: {
        all?: boolean;
        keepStorage?: string;
        keepDuration?: string;
        filter: string[];
        verbose?: boolean;
        addr?: string;
      }) => {
        const keepBytes = quantity('--keep-storage', flags.keepStorage, parseSize);
        const keepMs = quantity('--keep-duration', flags.keepDuration, parseDuration);
        const farm = await connectFarm(flags.addr);
        try {
          let total = 0;
          let first = true;
          const now = Date.now();
          const print = (r: UsageRecord): void => {
            total += Number(r.size);
            if (flags.verbose) {
              process.stdout.write(verbose([r]));
              return;
            }
            const lines = [tableRow(r, now).concat('')];
            if (first) lines.unshift(tableHeader());
            first = false;
            process.stdout.write(tabwrite(lines));
          };
          await farm.client.prune(
            {
              filter: flags.filter,
              all: flags.all === true,
              keepBytes,
              keepDurationSeconds: Math.floor(keepMs / 1000),
            },
            print,
          );
          process.stdout.write(tabwrite([['Total:', formatBytes(total)]]));
        } finally {
          await farm.close();
        }
      },
    );
}
