/**
 * The local farm daemon: `node cli/dist/farm/daemon.js --state-dir DIR [--idle-timeout MS]
 * [--insecure-registry HOST]...`, started in the background by `kiln build` (or `kiln farm
 * start`) as buildkitd is, and kept up between builds.
 *
 * It runs the farm's services (services.ts) with the control API on a unix socket under the state
 * dir (`farm.sock`, mode 0600: only the owner of the state dir can build), then writes
 * `farm.json` (its pid, socket, code stamp and config; see local.ts) — the sign that it is ready.
 * It stops by itself after `--idle-timeout` with no build running. SIGTERM/SIGINT: it stops
 * taking builds (the socket goes), lets running ones finish (up to {@link DRAIN_MS}), then exits.
 * Logs: pino JSON lines on stdout (local.ts points it at `logs/farm.log`).
 */
import { chmodSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { farmPaths, processStartTime } from './paths.js';
import type { FarmInfo } from './paths.js';
import { startFarmServices } from './services.js';

const DRAIN_MS = 10 * 60_000;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'state-dir': { type: 'string' },
      'idle-timeout': { type: 'string' },
      'insecure-registry': { type: 'string', multiple: true },
      slots: { type: 'string' },
      stamp: { type: 'string' },
    },
  });
  const stateDir = values['state-dir'];
  if (!stateDir) throw new Error('--state-dir is required');
  const idleMs = Number(values['idle-timeout'] ?? 0);
  if (!Number.isFinite(idleMs) || idleMs < 0) throw new Error('--idle-timeout: milliseconds >= 0');
  const slots = values.slots ? Number(values.slots) : undefined;
  const insecure = values['insecure-registry'] ?? [];
  const paths = farmPaths(stateDir);
  const log = pino({
    level: process.env.KILN_LOG_LEVEL || 'info',
    base: { pid: process.pid, service: 'kiln-farm' },
  });
  rmSync(paths.socket, { force: true }); // a dead farm's
  const farm = await startFarmServices({
    stateDir,
    listen: `unix:${paths.socket}`,
    insecureRegistries: insecure,
    ...(slots ? { slots } : {}),
    log,
  });
  chmodSync(paths.socket, 0o600);
  const info: FarmInfo = {
    pid: process.pid,
    ...(processStartTime(process.pid) ? { startTime: processStartTime(process.pid) } : {}),
    socket: paths.socket,
    stamp: values.stamp ?? '',
    insecureRegistries: insecure,
    platforms: farm.platforms,
    slots: farm.slots,
    idleTimeoutMs: idleMs,
    startedAt: new Date().toISOString(),
  };
  writeFileSync(`${paths.info}.tmp`, JSON.stringify(info));
  renameSync(`${paths.info}.tmp`, paths.info);
  log.info(
    { socket: paths.socket, slots: farm.slots, platforms: farm.platforms },
    'local farm ready',
  );

  let stopping = false;
  const stop = async (why: string, drain: boolean): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log.info({ why }, 'local farm stopping');
    // The farm is gone for new clients at once; a client that reads farm.json now finds a pid
    // that is exiting and waits for it, then starts a new farm.
    rmSync(paths.socket, { force: true });
    if (drain) {
      const until = Date.now() + DRAIN_MS;
      while (farm.server.builds.running().length > 0 && Date.now() < until)
        await new Promise((r) => setTimeout(r, 100));
    }
    await farm.close();
    // Only our own record: a successor may have written its own by now.
    if (readOwnPid(paths.info) === process.pid) rmSync(paths.info, { force: true });
    log.info('local farm stopped');
    log.flush();
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM', true));
  process.on('SIGINT', () => void stop('SIGINT', true));
  if (idleMs > 0) {
    let lastBusy = Date.now();
    const tick = setInterval(
      () => {
        if (farm.server.builds.running().length > 0) lastBusy = Date.now();
        else if (Date.now() - lastBusy >= idleMs) {
          clearInterval(tick);
          void stop('idle', false);
        }
      },
      Math.min(1_000, Math.max(50, idleMs / 4)),
    );
  }
}

function readOwnPid(path: string): number | undefined {
  try {
    return (JSON.parse(readFileSync(path, 'utf8')) as FarmInfo).pid;
  } catch {
    return undefined;
  }
}

main().catch((err: unknown) => {
  const code = (err as { code?: unknown }).code;
  const what = err instanceof Error ? err.message : String(err);
  process.stderr.write(`kiln farm: ${what}${typeof code === 'string' ? ` [${code}]` : ''}\n`);
  process.exit(1);
});
