// A real OCI registry (Debian's docker-registry: the CNCF distribution registry 2.8) on a free
// loopback port, with filesystem storage in a temp dir and deletes enabled.

import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnManaged } from './process.js';
import type { ManagedProcess } from './process.js';
import { freePort, makeTempDir, requireBinary, waitFor } from './util.js';

export interface RegistryOptions {
  /** Port; default: a free port (retried when another process takes it first). */
  port?: number;
  /** Storage root; default: a temp dir removed by stop(). A given dir is kept. */
  storageDir?: string;
  timeoutMs?: number;
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

function configYaml(port: number, storageDir: string): string {
  return [
    'version: 0.1',
    'log:',
    '  level: warn',
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
    writeFileSync(configPath, configYaml(port, storageDir));
    const proc = spawnManaged(bin, ['serve', configPath], { name: 'docker-registry' });
    const url = `http://127.0.0.1:${port}`;
    try {
      await waitFor(
        'docker-registry GET /v2/ 200',
        async () => {
          const res = await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(2_000) });
          await res.arrayBuffer();
          return res.status === 200;
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
