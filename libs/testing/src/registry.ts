// A real OCI registry (Debian's docker-registry: the CNCF distribution registry 2.8) on a free
// loopback port, with filesystem storage in a temp dir, deletes enabled, and optionally auth.

import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnManaged } from '@kiln/common';
import type { ManagedProcess } from '@kiln/common';
import { freePort, makeTempDir, requireBinary, waitFor } from './util.js';

/** The registry's `auth` backend: docker's token auth, or htpasswd Basic auth. */
export type RegistryAuthConfig =
  | { token: { realm: string; service: string; issuer: string; rootCertBundle: string } }
  | { htpasswd: { realm: string; path: string } };

export interface RegistryOptions {
  /** Port; default: a free port (retried when another process takes it first). */
  port?: number;
  /** Storage root; default: a temp dir removed by stop(). A given dir is kept. */
  storageDir?: string;
  timeoutMs?: number;
  /** Auth backend (default none: anonymous pull and push). */
  auth?: RegistryAuthConfig;
}

export interface RegistryHandle {
  /** 127.0.0.1:PORT (what image references use) */
  readonly addr: string;
  /** http://127.0.0.1:PORT */
  readonly url: string;
  readonly port: number;
  readonly storageDir: string;
  readonly process: ManagedProcess;
  stop(): Promise<void>;
}

function authYaml(auth: RegistryAuthConfig | undefined): string[] {
  if (auth === undefined) return [];
  if ('token' in auth) {
    return [
      'auth:',
      '  token:',
      `    realm: ${JSON.stringify(auth.token.realm)}`,
      `    service: ${JSON.stringify(auth.token.service)}`,
      `    issuer: ${JSON.stringify(auth.token.issuer)}`,
      `    rootcertbundle: ${JSON.stringify(auth.token.rootCertBundle)}`,
    ];
  }
  return [
    'auth:',
    '  htpasswd:',
    `    realm: ${JSON.stringify(auth.htpasswd.realm)}`,
    `    path: ${JSON.stringify(auth.htpasswd.path)}`,
  ];
}

function configYaml(port: number, storageDir: string, auth?: RegistryAuthConfig): string {
  return [
    'version: 0.1',
    'log:',
    // At info an htpasswd registry logs the credentials it provisions (tests read them).
    `  level: ${auth === undefined ? 'warn' : 'info'}`,
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${JSON.stringify(storageDir)}`,
    '  delete:',
    '    enabled: true',
    '  maintenance:',
    '    uploadpurging:',
    '      enabled: false',
    'http:',
    `  addr: 127.0.0.1:${port}`,
    '  secret: kiln-test-registry',
    'health:',
    '  storagedriver:',
    '    enabled: false',
    ...authYaml(auth),
    '',
  ].join('\n');
}

export async function startRegistry(opts: RegistryOptions = {}): Promise<RegistryHandle> {
  const bin = requireBinary('docker-registry');
  const attempts = opts.port === undefined ? 5 : 1;
  let lastErr: unknown;
  for (let i = 0; i < attempts; i++) {
    const port = opts.port ?? (await freePort());
    const tmp = makeTempDir('registry');
    const storageDir = opts.storageDir ?? join(tmp.dir, 'storage');
    mkdirSync(storageDir, { recursive: true });
    const configPath = join(tmp.dir, 'config.yml');
    writeFileSync(configPath, configYaml(port, storageDir, opts.auth));
    const proc = spawnManaged(bin, ['serve', configPath], { name: 'docker-registry' });
    const url = `http://127.0.0.1:${port}`;
    try {
      // Ready when /v2/ answers: 200, or 401 behind auth.
      const ready = opts.auth === undefined ? 200 : 401;
      await waitFor(
        `docker-registry GET /v2/ ${ready}`,
        async () => {
          const res = await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(2_000) });
          await res.arrayBuffer();
          return res.status === ready;
        },
        {
          timeoutMs: opts.timeoutMs ?? 30_000,
          abort: () => (proc.hasExited() ? `docker-registry exited:\n${proc.output()}` : undefined),
        },
      );
      return {
        addr: `127.0.0.1:${port}`,
        url,
        port,
        storageDir,
        process: proc,
        stop: async () => {
          await proc.stop();
          tmp.remove();
        },
      };
    } catch (err) {
      lastErr = err;
      await proc.stop();
      tmp.remove();
      // Another process may have taken the port between freePort() and the bind: retry.
      if (!/address already in use/i.test(proc.output())) break;
    }
  }
  throw lastErr;
}
