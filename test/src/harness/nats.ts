// A real nats-server with JetStream on a free loopback port.

import { connect as netConnect } from 'node:net';
import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnManaged } from './process.js';
import type { ManagedProcess } from './process.js';
import { makeTempDir, requireBinary, waitFor } from './util.js';

export interface NatsServerOptions {
  /** Client port; default: a random free port chosen by the server (no race). */
  port?: number;
  /** JetStream store dir; default: a temp dir removed by stop(). A given dir is kept. */
  storeDir?: string;
  /** Extra nats-server arguments. */
  args?: string[];
  /** Readiness timeout (default 30 s). */
  timeoutMs?: number;
}

export interface NatsServerHandle {
  /** nats://127.0.0.1:PORT */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  readonly storeDir: string;
  readonly process: ManagedProcess;
  /** Kills the server and removes its temp dirs (not a caller-given storeDir). */
  stop(): Promise<void>;
}

/** Starts `nats-server -js` and waits until it greets a client with INFO. */
export async function startNats(opts: NatsServerOptions = {}): Promise<NatsServerHandle> {
  const bin = requireBinary('nats-server');
  const tmp = makeTempDir('nats');
  const storeDir = opts.storeDir ?? join(tmp.dir, 'js');
  const portsDir = join(tmp.dir, 'ports');
  mkdirSync(storeDir, { recursive: true });
  mkdirSync(portsDir, { recursive: true });
  const args = [
    '-js',
    '-a',
    '127.0.0.1',
    '-p',
    String(opts.port ?? -1),
    '-sd',
    storeDir,
    '--ports_file_dir',
    portsDir,
    ...(opts.args ?? []),
  ];
  const proc = spawnManaged(bin, args, { name: 'nats-server' });
  const abort = () => (proc.hasExited() ? `nats-server exited:\n${proc.output()}` : undefined);
  try {
    const port = await waitFor(
      'the nats-server ports file',
      () => {
        const f = readdirSync(portsDir).find((n) => n.endsWith('.ports'));
        if (!f) return undefined;
        // nats-server 2.9 writes {"nats": ["nats://host:port"], ...}
        const ports = JSON.parse(readFileSync(join(portsDir, f), 'utf8')) as {
          nats?: string[];
          client?: string[];
        };
        const url = ports.nats?.[0] ?? ports.client?.[0];
        return url ? Number(new URL(url).port) : undefined;
      },
      { timeoutMs: opts.timeoutMs ?? 30_000, abort },
    );
    await waitFor('nats-server to accept connections', () => natsGreets(port), {
      timeoutMs: opts.timeoutMs ?? 30_000,
      abort,
    });
    return {
      url: `nats://127.0.0.1:${port}`,
      host: '127.0.0.1',
      port,
      storeDir,
      process: proc,
      stop: async () => {
        await proc.stop();
        tmp.remove();
      },
    };
  } catch (err) {
    await proc.stop();
    tmp.remove();
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
