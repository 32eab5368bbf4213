// An S3 API server (s3rver, on disk in a temp dir) as a child process on a free loopback port.
// s3rver accepts any access key; the conventional S3RVER/S3RVER pair is used.

import { createRequire } from 'node:module';
import { join } from 'node:path';
import { spawnManaged } from '@kiln/common';
import type { ManagedProcess } from '@kiln/common';
import { makeTempDir, waitFor } from '@kiln/testing';

export const S3_ACCESS_KEY = 'S3RVER';
export const S3_SECRET_KEY = 'S3RVER';
export const S3_DEFAULT_BUCKET = 'kiln-test';

export interface S3ServerOptions {
  /** Port; default: chosen by the OS (port 0, no race). */
  port?: number;
  /** Data directory; default: a temp dir removed by stop(). A given dir is kept. */
  directory?: string;
  /** Buckets created at start (default: ['kiln-test']). */
  buckets?: string[];
  timeoutMs?: number;
}

export interface S3ServerHandle {
  /** http://127.0.0.1:PORT */
  readonly endpoint: string;
  readonly host: string;
  readonly port: number;
  readonly accessKey: string;
  readonly secretKey: string;
  /** The first configured bucket (kiln-test by default). */
  readonly bucket: string;
  readonly directory: string;
  readonly process: ManagedProcess;
  stop(): Promise<void>;
}

// Runs s3rver and prints {"port": N} once it listens. argv: s3rver module path, dir, port, buckets.
const RUNNER = `
const [modulePath, directory, port, buckets] = process.argv.slice(1);
const S3rver = require(modulePath);
const server = new S3rver({
  address: '127.0.0.1',
  port: Number(port),
  directory,
  silent: true,
  configureBuckets: JSON.parse(buckets).map((name) => ({ name })),
});
server.run().then(
  (addr) => process.stdout.write(JSON.stringify({ port: addr.port }) + '\\n'),
  (err) => { console.error(err); process.exit(1); },
);
const shutdown = () => {
  setTimeout(() => process.exit(0), 2000).unref(); // do not wait long for keep-alive clients
  server.close().finally(() => process.exit(0));
};
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
`;

export async function startS3(opts: S3ServerOptions = {}): Promise<S3ServerHandle> {
  const require = createRequire(import.meta.url);
  const modulePath = require.resolve('s3rver');
  const tmp = makeTempDir('s3');
  const directory = opts.directory ?? join(tmp.dir, 'data');
  const buckets = opts.buckets ?? [S3_DEFAULT_BUCKET];
  let port: number | undefined;
  const proc = spawnManaged(
    process.execPath,
    ['-e', RUNNER, modulePath, directory, String(opts.port ?? 0), JSON.stringify(buckets)],
    {
      name: 's3rver',
      onLine: (line, stream) => {
        if (stream === 'stdout' && port === undefined && line.startsWith('{')) {
          port = (JSON.parse(line) as { port: number }).port;
        }
      },
    },
  );
  try {
    const readyPort = await waitFor('s3rver to listen', () => port, {
      timeoutMs: opts.timeoutMs ?? 30_000,
      abort: () => (proc.hasExited() ? `s3rver exited:\n${proc.output()}` : undefined),
    });
    const endpoint = `http://127.0.0.1:${readyPort}`;
    return {
      endpoint,
      host: '127.0.0.1',
      port: readyPort,
      accessKey: S3_ACCESS_KEY,
      secretKey: S3_SECRET_KEY,
      bucket: buckets[0] ?? S3_DEFAULT_BUCKET,
      directory,
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
