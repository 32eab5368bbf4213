// deploy/nats/: the sample nats-server config, with the users `scripts/nats-auth.mjs` generates,
// run by a real nats-server: each role connects with what the script wrote for it (passwords,
// or nkey seed files), anonymous clients are refused, a worker cannot write task records, and
// every secret file is 0600.
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { NatsConnectError, TASKS_BUCKET, connectNats, openBus, workerInboxPrefix } from '@kiln/bus';
import type { NatsAuth } from '@kiln/bus';
import { startNatsServer } from '@kiln/common';
import { jetstream } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { afterEach, describe, expect, it } from 'vitest';
import { REPO_ROOT, makeTempDir, requireBinary } from '../harness/index.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** KILN_NATS_* of an env file the script wrote, as the services read them. */
function authFromEnvFile(path: string): NatsAuth {
  const env = Object.fromEntries(
    readFileSync(path, 'utf8')
      .trim()
      .split('\n')
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  );
  return {
    ...(env.KILN_NATS_USER ? { user: env.KILN_NATS_USER, password: env.KILN_NATS_PASSWORD } : {}),
    ...(env.KILN_NATS_NKEY ? { nkeySeedFile: env.KILN_NATS_NKEY } : {}),
  };
}

/** A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl. */
function makeCerts(
  dir: string,
): Record<'ca' | 'serverCert' | 'serverKey' | 'clientCert' | 'clientKey', string> {
  const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  ssl(
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-days',
    '1',
    '-subj',
    '/CN=kiln-test-ca',
    '-keyout',
    'ca.key',
    '-out',
    'ca.crt',
  );
  for (const [name, ext] of [
    ['server', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth'],
    ['client', 'extendedKeyUsage=clientAuth'],
  ] as const) {
    ssl(
      'req',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-subj',
      `/CN=${name}`,
      '-keyout',
      `${name}.key`,
      '-out',
      `${name}.csr`,
    );
    writeFileSync(join(dir, `${name}.ext`), `${ext}\n`);
    ssl(
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      'ca.crt',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-days',
      '1',
      '-extfile',
      `${name}.ext`,
      '-out',
      `${name}.crt`,
    );
  }
  return {
    ca: join(dir, 'ca.crt'),
    serverCert: join(dir, 'server.crt'),
    serverKey: join(dir, 'server.key'),
    clientCert: join(dir, 'client.crt'),
    clientKey: join(dir, 'client.key'),
  };
}

async function farmFromSample(nkeys: boolean, tls = false) {
  const tmp = makeTempDir('deploy-nats');
  cleanups.push(() => tmp.remove());
  const out = join(tmp.dir, 'etc');
  execFileSync(process.execPath, [
    join(REPO_ROOT, 'scripts/nats-auth.mjs'),
    '--out',
    out,
    '--worker',
    'w1',
    ...(nkeys ? ['--nkeys'] : []),
  ]);
  for (const f of readdirSync(out)) expect(statSync(join(out, f)).mode & 0o777, f).toBe(0o600);
  // The sample as it is, but for its store dir: the flags put the port, the address and the store
  // (nats-server refuses a store dir given twice) in the test's place.
  const sample = readFileSync(join(REPO_ROOT, 'deploy/nats/nats-server.conf'), 'utf8');
  const storeLine = /^\s*store_dir: .*$/m;
  expect(sample).toMatch(storeLine);
  let conf = sample.replace(storeLine, '');
  let certs: ReturnType<typeof makeCerts> | undefined;
  if (tls) {
    // The sample's TLS block as documented: uncommented, with this test's certificates.
    certs = makeCerts(tmp.dir);
    const block = /^# tls \{\n(?:#.*\n)*?# \}\n/m;
    expect(conf).toMatch(block);
    const c = certs;
    conf = conf.replace(block, (b) =>
      b
        .replace(/^# ?/gm, '')
        .replace('/etc/nats/tls/server.crt', c.serverCert)
        .replace('/etc/nats/tls/server.key', c.serverKey)
        .replace('/etc/nats/tls/ca.crt', c.ca),
    );
  }
  writeFileSync(join(out, 'nats-server.conf'), conf);
  const server = await startNatsServer({
    bin: requireBinary('nats-server'),
    storeDir: join(tmp.dir, 'js'),
    portsDir: join(tmp.dir, 'ports'),
    args: ['-c', join(out, 'nats-server.conf')],
  });
  cleanups.push(() => server.process.stop().then(() => undefined));
  return { url: server.url, out, certs };
}

describe('deploy/nats/nats-server.conf with scripts/nats-auth.mjs', () => {
  for (const nkeys of [false, true]) {
    it(`runs the farm's roles with ${nkeys ? 'nkey seed files' : 'passwords'}`, async () => {
      const { url, out } = await farmFromSample(nkeys);
      const s = await connectNats(url, authFromEnvFile(join(out, 'scheduler.env')));
      cleanups.push(() => s.close());
      const bus = await openBus(s);
      await bus.tasks.put('k', new TextEncoder().encode('{}'));
      const w = await connectNats(url, {
        ...authFromEnvFile(join(out, 'worker-w1.env')),
        inboxPrefix: workerInboxPrefix('w1'),
      });
      cleanups.push(() => w.close());
      const kv = await new Kvm(jetstream(w)).open(TASKS_BUCKET);
      expect((await kv.get('k'))?.string()).toBe('{}');
      await expect(kv.put('k', new TextEncoder().encode('x'))).rejects.toThrow(/permission/i);
      const anon = await connectNats(url, {}, { maxReconnectAttempts: 0 }).catch((e: unknown) => e);
      expect(anon).toBeInstanceOf(NatsConnectError);
    });
  }

  it('runs with its TLS block: mutual TLS, the services trusting the farm CA', async () => {
    const { url, out, certs } = await farmFromSample(false, true);
    if (!certs) throw new Error('no certificates');
    const creds = authFromEnvFile(join(out, 'scheduler.env'));
    const tls = { tlsCa: certs.ca, tlsCert: certs.clientCert, tlsKey: certs.clientKey };
    const s = await connectNats(url, { ...creds, ...tls });
    cleanups.push(() => s.close());
    await openBus(s);
    // The server's certificate is not trusted without the CA; no client certificate, no entry.
    const once = { maxReconnectAttempts: 0, timeout: 5_000 };
    const noCa = await connectNats(
      url,
      { ...creds, tlsCert: tls.tlsCert, tlsKey: tls.tlsKey },
      once,
    ).catch((e: unknown) => e);
    expect(noCa).toMatchObject({ code: 'BUS_TLS' });
    const noCert = await connectNats(url, { ...creds, tlsCa: certs.ca }, once).catch(
      (e: unknown) => e,
    );
    expect(noCert).toBeInstanceOf(NatsConnectError);
  });
});
