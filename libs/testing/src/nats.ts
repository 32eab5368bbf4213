// A real nats-server with JetStream on a free loopback port.

import { join } from 'node:path';
import { generateFarmAuth } from '@kiln/bus';
import type { GeneratedFarmAuth, NatsAuth } from '@kiln/bus';
import { startNatsServer } from '@kiln/common';
import type { ManagedProcess } from '@kiln/common';
import { makeTempDir, requireBinary } from './util.js';

export interface NatsServerOptions {
  /** Client port; default: a random free port chosen by the server (no race). */
  port?: number;
  /** JetStream store dir; default: a temp dir removed by stop(). A given dir is kept. */
  storeDir?: string;
  /** Extra nats-server arguments. */
  args?: string[];
  /**
   * Run with the farm's permissions (`@kiln/bus` nats-permissions.ts): a scheduler user and one
   * user per worker id, random passwords; anonymous clients are refused. Given credentials (a
   * restart on the same store) are reused.
   */
  auth?: { workers: readonly string[] } | GeneratedFarmAuth;
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
  /** The users, when started with `auth`. */
  readonly auth?: GeneratedFarmAuth;
  /** Kills the server and removes its temp dirs (not a caller-given storeDir). */
  stop(): Promise<void>;
}

/** Starts `nats-server -js` and waits until it greets a client with INFO. */
export async function startNats(opts: NatsServerOptions = {}): Promise<NatsServerHandle> {
  const bin = requireBinary('nats-server');
  const tmp = makeTempDir('nats');
  const storeDir = opts.storeDir ?? join(tmp.dir, 'js');
  const auth =
    opts.auth === undefined
      ? undefined
      : 'config' in opts.auth
        ? opts.auth
        : generateFarmAuth(opts.auth.workers);
  try {
    const s = await startNatsServer({
      bin,
      storeDir,
      portsDir: join(tmp.dir, 'ports'),
      ...(opts.port !== undefined ? { port: opts.port } : {}),
      ...(opts.args ? { args: opts.args } : {}),
      ...(auth ? { config: auth.config, configFile: join(tmp.dir, 'nats-server.conf') } : {}),
      ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
    });
    return {
      url: s.url,
      host: '127.0.0.1',
      port: s.port,
      storeDir,
      process: s.process,
      ...(auth ? { auth } : {}),
      stop: async () => {
        await s.process.stop();
        tmp.remove();
      },
    };
  } catch (err) {
    tmp.remove();
    throw err;
  }
}

/** `KILN_NATS_USER`/`KILN_NATS_PASSWORD` of a role, for a service process's environment. */
export function natsAuthEnv(auth: NatsAuth | undefined): Record<string, string> {
  if (!auth?.user || auth.password === undefined) return {};
  return { KILN_NATS_USER: auth.user, KILN_NATS_PASSWORD: auth.password };
}
