/**
 * The shipped `kiln` command (cli/bin/kiln.js run as a command: /bin/sh starts Node on it) keeps
 * NODE_EXTRA_CA_CERTS from Node's start, where Node 20 would read the file before any code runs,
 * and trusts the file's certificates when its one TLS connection is made. A real scheduler
 * (ControlServer on a real nats-server) serves TLS with a certificate of a CA made by openssl(1)
 * that only NODE_EXTRA_CA_CERTS names; the Dockerfile needs an entitlement the build does not ask
 * for, so a build that got through TLS is refused at solve time (ENTITLEMENT_DENIED) without a
 * worker. Needs `npm run build` (the bundle).
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT, makeTempDir } from '../harness/index.js';
import { ENTITLEMENT_DOCKERFILE, startWorkerlessFarm } from './workerless-farm.js';
import type { WorkerlessFarm } from './workerless-farm.js';

const BIN = join(REPO_ROOT, 'cli', 'bin', 'kiln.js');

let tmp: { dir: string; remove: () => void };
let farm: WorkerlessFarm;
let addr: string;
let ctx: string;

const openssl = (args: string[]): void => {
  execFileSync('openssl', args, { cwd: tmp.dir, stdio: 'pipe' });
};
const newKey = (name: string): string[] => [
  '-newkey',
  'ec',
  '-pkeyopt',
  'ec_paramgen_curve:prime256v1',
  '-nodes',
  '-keyout',
  `${name}.key`,
];

/** Runs `cmd args` with `env` (replacing the environment's NODE_EXTRA_CA_CERTS); never throws. */
function run(
  cmd: string,
  args: string[],
  env: Record<string, string | undefined>,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const full: NodeJS.ProcessEnv = { ...process.env, KILN_ADDR: '' };
  delete full.NODE_EXTRA_CA_CERTS;
  for (const [k, v] of Object.entries(env)) if (v !== undefined) full[k] = v;
  return new Promise((resolve) => {
    execFile(cmd, args, { env: full, timeout: 120_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? Number(err.code ?? 1) : 0, stdout, stderr }),
    );
  });
}

beforeAll(async () => {
  tmp = makeTempDir('launcher');
  openssl([
    'req',
    '-x509',
    ...newKey('ca'),
    '-out',
    'ca.crt',
    '-days',
    '1',
    '-subj',
    '/CN=kiln-test-ca',
  ]);
  openssl(['req', '-new', ...newKey('server'), '-out', 'server.csr', '-subj', '/CN=localhost']);
  await writeFile(join(tmp.dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  openssl([
    'x509',
    '-req',
    '-in',
    'server.csr',
    '-CA',
    'ca.crt',
    '-CAkey',
    'ca.key',
    '-CAcreateserial',
    '-out',
    'server.crt',
    '-days',
    '1',
    '-extfile',
    'san.ext',
  ]);
  const credentials = grpc.ServerCredentials.createSsl(
    null,
    [
      {
        private_key: await readFile(join(tmp.dir, 'server.key')),
        cert_chain: await readFile(join(tmp.dir, 'server.crt')),
      },
    ],
    false,
  );
  farm = await startWorkerlessFarm({ credentials });
  addr = farm.addr;
  ctx = join(tmp.dir, 'ctx');
  await mkdir(ctx, { recursive: true });
  await writeFile(join(ctx, 'Dockerfile'), ENTITLEMENT_DOCKERFILE);
}, 60_000);

afterAll(async () => {
  await farm?.close();
  tmp?.remove();
});

describe('the kiln command', () => {
  it("keeps NODE_EXTRA_CA_CERTS from Node's start (Node itself reads it first)", async () => {
    const env = { NODE_EXTRA_CA_CERTS: join(tmp.dir, 'no-such-file.pem') };
    const asCommand = await run(BIN, ['--version'], env);
    expect(asCommand.code, asCommand.stderr).toBe(0);
    expect(asCommand.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
    expect(asCommand.stderr).not.toMatch(/extra certs/);
    // The same file through `node kiln.js`: Node reads it at start and warns.
    const throughNode = await run(process.execPath, [BIN, '--version'], env);
    expect(throughNode.code).toBe(0);
    expect(throughNode.stderr).toMatch(/Ignoring extra certs from .*no-such-file\.pem/);
  }, 60_000);

  it('trusts the certificates of NODE_EXTRA_CA_CERTS on its TLS connection', async () => {
    const build = [BIN, 'build', ctx, '--progress', 'plain', '--addr', addr, '--tls'];
    const trusted = await run(build[0]!, build.slice(1), {
      NODE_EXTRA_CA_CERTS: join(tmp.dir, 'ca.crt'),
    });
    expect(trusted.code).toBe(1);
    expect(trusted.stderr).toMatch(/needs entitlement network\.host.*\[ENTITLEMENT_DENIED\]/);
    // Without it the farm's certificate is not trusted: the build fails at once, saying so.
    const untrusted = await run(build[0]!, build.slice(1), {});
    expect(untrusted.code).toBe(1);
    expect(untrusted.stderr).toMatch(
      /has a certificate this client does not trust: .*certificate.*\[SCHEDULER_TLS_UNTRUSTED\]/,
    );
  }, 120_000);
});
