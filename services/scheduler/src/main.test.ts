// The service entry as a process: bundled from source (`bundleEntries`, as the dispatch suites
// bundle the worker CLI), configured through the environment, serving the control API, stopping on SIGTERM;
// its listen rules, TLS and mutual TLS (certificates made by openssl(1)), tokens and reloads.
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { KilnClient } from '@kiln/client';
import type { ConnectOptions } from '@kiln/client';
import { KilnError } from '@kiln/protocol';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnManaged } from '@kiln/common';
import { bundleEntries, makeTempDir, startNats, waitFor } from '@kiln/testing';
import type { NatsServerHandle } from '@kiln/testing';

let nats: NatsServerHandle;
let tmp: { dir: string; remove: () => void };
let entry: string;

beforeAll(async () => {
  tmp = makeTempDir('scheduler-main');
  nats = await startNats();
  entry = (await bundleEntries({ 'kiln-scheduler': 'services/scheduler/src/main.ts' }, tmp.dir))[
    'kiln-scheduler'
  ]!;
});

afterAll(async () => {
  await nats?.stop();
  tmp?.remove();
});

type Line = Record<string, unknown>;

/** Starts the bundled scheduler; resolves once it listens (or rejects with its output if it exits). */
async function startScheduler(args: string[], env: Record<string, string> = {}) {
  const lines: Line[] = [];
  const proc = spawnManaged(process.execPath, [entry, '--log-level', 'info', ...args], {
    name: 'scheduler',
    env: { ...process.env, KILN_NATS_URL: nats.url, ...env },
    onLine: (line, stream) => {
      if (stream === 'stdout' && line.startsWith('{')) lines.push(JSON.parse(line) as Line);
    },
  });
  const listening = await waitFor('the scheduler to listen', () => {
    if (proc.hasExited()) throw new Error(`scheduler exited:\n${proc.output()}`);
    return lines.find((l) => l.msg === 'control api listening');
  });
  return { proc, lines, port: Number(listening.port) };
}

/** openssl(1), in the temp dir; arguments as one string (none holds a space). */
const openssl = (args: string): void => {
  execFileSync('openssl', args.split(' '), { cwd: tmp.dir, stdio: 'pipe' });
};
/** A new P-256 key into `<name>.key`, no passphrase. */
const newKey = (name: string): string =>
  `-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ${name}.key`;

/** A self-signed CA: `<name>.crt`, `<name>.key`. */
function makeCa(name: string): void {
  openssl(`req -x509 ${newKey(name)} -out ${name}.crt -days 1 -subj /CN=${name}`);
}

/** A key and a certificate signed by `ca` (`<ca>.crt`/`<ca>.key`), with optional subjectAltName. */
function issue(name: string, cn: string, ca: string, san?: string): void {
  openssl(`req -new ${newKey(name)} -out ${name}.csr -subj /CN=${cn}`);
  writeFileSync(join(tmp.dir, `${name}.ext`), san ? `subjectAltName=${san}\n` : '\n');
  openssl(
    `x509 -req -in ${name}.csr -CA ${ca}.crt -CAkey ${ca}.key -CAcreateserial -days 1 -extfile ${name}.ext -out ${name}.crt`,
  );
}

const file = (name: string): Buffer => readFileSync(join(tmp.dir, name));

/** Connects and lists workers: resolves with the error, or undefined when it worked. */
async function tryList(port: number, o: ConnectOptions): Promise<KilnError | undefined> {
  let client: KilnClient | undefined;
  try {
    client = await KilnClient.connect(`127.0.0.1:${port}`, { connectTimeoutMs: 3_000, ...o });
    await client.listWorkers();
    return undefined;
  } catch (e) {
    expect(e).toBeInstanceOf(KilnError);
    return e as KilnError;
  } finally {
    client?.close();
  }
}

describe('scheduler main', () => {
  it('serves the control API with config from the environment and stops on SIGTERM', async () => {
    const lines: Record<string, unknown>[] = [];
    const proc = spawnManaged(process.execPath, [entry, '--log-level', 'info'], {
      name: 'scheduler',
      env: {
        ...process.env,
        KILN_NATS_URL: nats.url,
        KILN_SCHEDULER_LISTEN: '127.0.0.1:0',
      },
      onLine: (line, stream) => {
        if (stream === 'stdout' && line.startsWith('{'))
          lines.push(JSON.parse(line) as Record<string, unknown>);
      },
    });
    const listening = await waitFor('the scheduler to listen', () => {
      if (proc.hasExited()) throw new Error(`scheduler exited:\n${proc.output()}`);
      return lines.find((l) => l.msg === 'control api listening');
    });
    expect(listening.component).toBe('control');
    expect(lines.find((l) => String(l.msg).startsWith('no authentication'))).toMatchObject({
      level: 30,
    });
    const client = await KilnClient.connect(`127.0.0.1:${String(listening.port)}`);
    try {
      expect(await client.listWorkers()).toEqual([]);
    } finally {
      client.close();
    }
    proc.kill('SIGTERM');
    expect((await proc.exited).code).toBe(0);
  });

  it('refuses to start on a non-loopback address without TLS and auth; --insecure-listen warns', async () => {
    const refused = spawnManaged(process.execPath, [entry, '--listen', '0.0.0.0:0'], {
      name: 'scheduler-refused',
      env: { ...process.env, KILN_NATS_URL: nats.url },
    });
    expect((await refused.exited).code).toBe(2);
    expect(refused.output()).toMatch(
      /kiln-scheduler: refusing to serve 0\.0\.0\.0:0 without TLS and authentication.*\[CONFIG_INVALID\]/,
    );
    expect(refused.output()).not.toMatch(/at .*main/); // one line, no stack
    const s = await startScheduler(['--listen', '0.0.0.0:0', '--insecure-listen']);
    try {
      expect(s.lines.find((l) => String(l.msg).startsWith('insecure listen'))).toMatchObject({
        level: 40,
      });
      expect(await tryList(s.port, {})).toBeUndefined();
    } finally {
      s.proc.kill('SIGTERM');
      await s.proc.exited;
    }
  });

  it('serves mutual TLS with tokens (refusing no or a foreign client certificate, a wrong token, plaintext) and reloads certificates and tokens', async () => {
    makeCa('ca');
    issue('server', 'kiln-server-1', 'ca', 'IP:127.0.0.1,DNS:localhost');
    issue('client', 'team-c', 'ca');
    makeCa('other-ca');
    issue('stranger', 'team-x', 'other-ca');
    const token = `tok-${randomUUID()}`;
    writeFileSync(join(tmp.dir, 'tokens'), `# tenants\nteam-a:${token}\n`);
    const s = await startScheduler([
      '--listen',
      '127.0.0.1:0',
      '--tlscert',
      join(tmp.dir, 'server.crt'),
      '--tlskey',
      join(tmp.dir, 'server.key'),
      '--tlscacert',
      join(tmp.dir, 'ca.crt'),
      '--tokens-file',
      join(tmp.dir, 'tokens'),
    ]);
    try {
      const ca = file('ca.crt');
      const mine = { ca, cert: file('client.crt'), key: file('client.key') };
      // A client certificate of the farm's CA: its CN is the tenant; with a token, the token's.
      expect(await tryList(s.port, { tls: mine })).toBeUndefined();
      expect(await tryList(s.port, { tls: mine, token })).toBeUndefined();
      expect((await tryList(s.port, { tls: mine, token: `bad-${randomUUID()}` }))?.code).toBe(
        'UNAUTHENTICATED',
      );
      // No client certificate, even with a valid token; one from another CA; plaintext.
      expect(await tryList(s.port, { tls: { ca }, token })).toBeInstanceOf(KilnError);
      const stranger = { ca, cert: file('stranger.crt'), key: file('stranger.key') };
      expect(await tryList(s.port, { tls: stranger })).toBeInstanceOf(KilnError);
      expect(await tryList(s.port, { token })).toBeInstanceOf(KilnError);

      // Certificates are reloaded on SIGHUP: new connections get the new one.
      const presented = (): Promise<string> =>
        new Promise((resolve, reject) => {
          const sock = tlsConnect(
            {
              host: '127.0.0.1',
              port: s.port,
              ...mine,
              servername: 'localhost',
              ALPNProtocols: ['h2'],
            },
            () => {
              const cn = sock.getPeerCertificate().subject.CN;
              sock.destroy();
              resolve(String(cn));
            },
          );
          sock.on('error', reject);
        });
      expect(await presented()).toBe('kiln-server-1');
      issue('server2', 'kiln-server-2', 'ca', 'IP:127.0.0.1,DNS:localhost');
      copyFileSync(join(tmp.dir, 'server2.key'), join(tmp.dir, 'server.key'));
      copyFileSync(join(tmp.dir, 'server2.crt'), join(tmp.dir, 'server.crt'));
      // To the scheduler itself: the harness's guard process would turn a SIGHUP into a SIGTERM.
      const hup = (): boolean => process.kill(Number(s.lines[0]?.pid), 'SIGHUP');
      hup();
      await waitFor('the new certificate to be served', async () =>
        (await presented()) === 'kiln-server-2' ? true : undefined,
      );
      // The tokens file too: a new token works once the file changed (no restart).
      const token2 = `tok2-${randomUUID()}`;
      writeFileSync(join(tmp.dir, 'tokens'), `team-a:${token}\nteam-b:${token2}\n`);
      hup();
      await waitFor('the new token to work', async () =>
        (await tryList(s.port, { tls: mine, token: token2 })) === undefined ? true : undefined,
      );
    } finally {
      s.proc.kill('SIGTERM');
      await s.proc.exited;
    }
  });

  it('exits with one clear line when nats-server refuses its credentials', async () => {
    const secured = await startNats({ auth: { workers: [] } });
    try {
      const run = async (env: Record<string, string>) => {
        const proc = spawnManaged(process.execPath, [entry], {
          name: 'scheduler',
          env: {
            ...process.env,
            KILN_NATS_URL: secured.url,
            KILN_SCHEDULER_LISTEN: '127.0.0.1:0',
            ...env,
          },
        });
        const { code } = await proc.exited;
        return { code, stderr: proc.output().trim() };
      };
      const wrong = await run({ KILN_NATS_USER: 'kiln-scheduler', KILN_NATS_PASSWORD: 'wrong' });
      expect(wrong.code).toBe(2);
      expect(wrong.stderr).toMatch(
        /^kiln-scheduler: nats-server at nats:\/\/127\.0\.0\.1:\d+ refused the credentials \(user kiln-scheduler\).* \[BUS_AUTH\]$/,
      );
      expect(wrong.stderr.split('\n')).toHaveLength(1);
      const anonymous = await run({});
      expect(anonymous.code).toBe(2);
      expect(anonymous.stderr).toMatch(/\(no credentials\).* \[BUS_AUTH\]$/);
      expect(anonymous.stderr.split('\n')).toHaveLength(1);
    } finally {
      await secured.stop();
    }
  });
});
