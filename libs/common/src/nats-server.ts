// A real nats-server with JetStream on a free loopback port, as a guarded child process (it dies
// with the process that started it). Used by the test harness and the CLI's embedded farm.

import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { join } from 'node:path';
import { spawnManaged } from './child-process.js';
import type { ManagedProcess } from './child-process.js';

export interface NatsServerStartOptions {
  /** The nats-server binary. */
  bin: string;
  /** JetStream store dir (created). */
  storeDir: string;
  /** A scratch dir for the server's ports file (created). */
  portsDir: string;
  /** Client port; default: a random free port chosen by the server (no race). */
  port?: number;
  /** Extra nats-server arguments. */
  args?: string[];
  /**
   * A nats-server configuration (e.g. an `authorization` block with the farm's users), written
   * 0600 to `configFile` (default: in `portsDir`) and passed with `-c`; flags still set the
   * port, the store dir and loopback.
   */
  config?: string;
  configFile?: string;
  /** Readiness timeout (default 30 s). */
  timeoutMs?: number;
}

export interface NatsServerProcess {
  /** nats://127.0.0.1:PORT */
  readonly url: string;
  readonly port: number;
  readonly process: ManagedProcess;
}

async function poll<T>(
  what: string,
  check: () => Promise<T | undefined> | T | undefined,
  deadline: number,
  proc: ManagedProcess,
): Promise<T> {
  for (;;) {
    if (proc.hasExited()) throw new Error(`${what}: nats-server exited:\n${proc.output()}`);
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Starts `nats-server -js` and resolves once it greets a client with INFO. */
export async function startNatsServer(o: NatsServerStartOptions): Promise<NatsServerProcess> {
  mkdirSync(o.storeDir, { recursive: true });
  // A ports file left by an earlier server (one killed before it could remove it) is not ours.
  rmSync(o.portsDir, { recursive: true, force: true });
  mkdirSync(o.portsDir, { recursive: true });
  let configArgs: string[] = [];
  if (o.config !== undefined) {
    const file = o.configFile ?? join(o.portsDir, 'nats-server.conf');
    // It holds the farm's passwords: readable by its owner only, even for a moment.
    rmSync(file, { force: true });
    writeFileSync(file, o.config, { mode: 0o600 });
    configArgs = ['-c', file];
  }
  const args = [
    ...configArgs,
    '-js',
    '-a',
    '127.0.0.1',
    '-p',
    String(o.port ?? -1),
    '-sd',
    o.storeDir,
    '--ports_file_dir',
    o.portsDir,
    ...(o.args ?? []),
  ];
  const proc = spawnManaged(o.bin, args, { name: 'nats-server' });
  const deadline = Date.now() + (o.timeoutMs ?? 30_000);
  try {
    const port = await poll(
      'the nats-server ports file',
      () => {
        const f = readdirSync(o.portsDir).find((n) => n.endsWith('.ports'));
        if (!f) return undefined;
        try {
          // nats-server 2.9 writes {"nats": ["nats://host:port"], ...}
          const ports = JSON.parse(readFileSync(join(o.portsDir, f), 'utf8')) as {
            nats?: string[];
            client?: string[];
          };
          const url = ports.nats?.[0] ?? ports.client?.[0];
          return url ? Number(new URL(url).port) : undefined;
        } catch {
          return undefined; // being written
        }
      },
      deadline,
      proc,
    );
    await poll(
      'nats-server to accept connections',
      async () => ((await natsGreets(port)) ? true : undefined),
      deadline,
      proc,
    );
    return { url: `nats://127.0.0.1:${port}`, port, process: proc };
  } catch (err) {
    await proc.stop();
    throw err;
  }
}

/** Connects and resolves true once the server sends its INFO line. */
function natsGreets(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = netConnect({ host: '127.0.0.1', port });
    let buf = '';
    const finish = (ok: boolean) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(2_000, () => finish(false));
    sock.on('error', () => finish(false));
    sock.on('data', (d: Buffer) => {
      buf += d.toString('utf8');
      if (buf.startsWith('INFO ')) finish(true);
    });
    sock.on('close', () => finish(buf.startsWith('INFO ')));
  });
}
