/**
 * `kiln farm start|stop|status`: the local farm that `kiln build` uses without `--addr` (see
 * farm/local.ts). `kiln build` starts it on first use; these commands are for starting it ahead
 * of time (with other settings), stopping it, and seeing what runs.
 */
import type { Command } from 'commander';
import { ExitStatus } from '../formatted-error.js';
import { defaultStateDir } from '../state-dir.js';

const collect = (v: string, prev: string[]): string[] => [...prev, v];

export function registerFarm(program: Command): void {
  const farm = program
    .command('farm')
    .description('the local farm that `kiln build` uses without --addr (kept up between builds)');
  farm
    .command('start')
    .description('start the local farm (a running one of the same code and settings is kept)')
    .option(
      '--idle-timeout <duration>',
      'stop after this long with no build (e.g. 30s, 10m; 0: never; default $KILN_FARM_IDLE_TIMEOUT, else 15m)',
    )
    .option('--slots <n>', 'tasks that run at once')
    .option('--insecure-registry <host>', 'talk plain HTTP to this registry', collect, [])
    .action(async (flags: { idleTimeout?: string; slots?: string; insecureRegistry: string[] }) => {
      const { localFarm } = await import('../farm/local.js');
      const { idleTimeout } = await import('../farm/idle.js');
      const stateDir = defaultStateDir();
      const f = await localFarm({
        stateDir,
        insecureRegistries: flags.insecureRegistry,
        idleTimeoutMs: idleTimeout(flags.idleTimeout),
        ...(flags.slots ? { slots: Number(flags.slots) } : {}),
        onWait: (m) => process.stderr.write(`${m}\n`),
      });
      await f.close();
      await printStatus(stateDir);
    });
  farm
    .command('stop')
    .description('stop the local farm (running builds finish first)')
    .action(async () => {
      const { stopLocalFarm } = await import('../farm/local.js');
      const r = await stopLocalFarm(defaultStateDir());
      process.stdout.write(r.pid ? `stopped (pid ${r.pid})\n` : 'not running\n');
    });
  farm
    .command('status')
    .description('whether the local farm runs, and with what')
    .option('--json', 'print the farm record as JSON')
    .action(async (flags: { json?: boolean }) => {
      const code = await printStatus(defaultStateDir(), flags.json);
      if (code !== 0) throw new ExitStatus(code);
    });
}

/** Prints the farm's state; 0 when it runs and answers, 1 otherwise (as `systemctl status`). */
async function printStatus(stateDir: string, json = false): Promise<number> {
  const { localFarmStatus } = await import('../farm/local.js');
  const s = await localFarmStatus(stateDir);
  if (json) {
    process.stdout.write(`${JSON.stringify({ stateDir, ...s })}\n`);
    return s.state === 'running' ? 0 : 1;
  }
  if (!s.info) {
    process.stdout.write(`stopped (${stateDir})\n`);
    return 1;
  }
  const i = s.info;
  const idle = i.idleTimeoutMs ? `${Math.round(i.idleTimeoutMs / 1000)} s` : 'never';
  process.stdout.write(
    [
      `${s.state}${s.stale ? ' (runs other code: the next build replaces it)' : ''}`,
      `  pid:         ${i.pid}`,
      `  socket:      ${i.socket}`,
      `  since:       ${i.startedAt}`,
      `  platforms:   ${i.platforms.join(', ')}`,
      `  slots:       ${i.slots}`,
      `  idle stop:   ${idle}`,
      ...(i.insecureRegistries.length ? [`  insecure:    ${i.insecureRegistries.join(', ')}`] : []),
      `  logs:        ${stateDir}/logs/farm.log`,
      '',
    ].join('\n'),
  );
  return s.state === 'running' ? 0 : 1;
}
