/**
 * `kiln build --addr` against a farm that needs a token: the CLI sends none, a wrong one, or the
 * right one from `--token`, `--token-file` or `KILN_TOKEN`. A real scheduler (ControlServer and
 * Dispatcher on a real nats-server); the Dockerfile needs an entitlement the build does not ask
 * for, so an authenticated build is refused at solve time (ENTITLEMENT_DENIED) without a worker,
 * which shows the token got through.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Authenticator, ControlServer, Dispatcher, parseTokens } from '@kiln/scheduler';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, startNats } from '../harness/index.js';
import type { NatsServerHandle } from '../harness/index.js';
import { runKiln } from './run-kiln.js';

const TOKEN = `cli-${randomUUID()}`;

let tmp: { dir: string; remove: () => void };
let nats: NatsServerHandle;
let nc: NatsConnection;
let dispatcher: Dispatcher;
let server: ControlServer;
let addr: string;
let ctx: string;

beforeAll(async () => {
  tmp = makeTempDir('remote-farm-auth');
  nats = await startNats();
  nc = await connect({ servers: nats.url });
  dispatcher = await Dispatcher.start({ nc });
  server = new ControlServer({
    dispatcher,
    auth: new Authenticator({ tokens: parseTokens(`team-cli:${TOKEN}`, 'test') }),
  });
  addr = `127.0.0.1:${await server.listen('127.0.0.1:0')}`;
  ctx = join(tmp.dir, 'ctx');
  await mkdir(ctx, { recursive: true });
  await writeFile(join(ctx, 'Dockerfile'), 'FROM scratch\nRUN --network=host true\n');
  await writeFile(join(tmp.dir, 'token'), `${TOKEN}\n`);
});

afterAll(async () => {
  await server?.close();
  await dispatcher?.close();
  await nc?.close();
  await nats?.stop();
  tmp?.remove();
});

describe('kiln build --addr with a token', () => {
  const build = (...extra: string[]) => [
    'build',
    ctx,
    '--progress',
    'plain',
    '--addr',
    addr,
    ...extra,
  ];

  it('is refused without a token or with a wrong one', async () => {
    const none = await runKiln(build());
    expect(none.code).toBe(1);
    expect(none.out).toMatch(/this farm needs authentication.*\[UNAUTHENTICATED\]/);
    const wrong = await runKiln(build('--token', `wrong-${randomUUID()}`));
    expect(wrong.code).toBe(1);
    expect(wrong.out).toMatch(/the token is not valid for this farm \[UNAUTHENTICATED\]/);
  });

  it('sends the token from --token, --token-file or KILN_TOKEN', async () => {
    const runs = [
      await runKiln(build('--token', TOKEN)),
      await runKiln(build('--token-file', join(tmp.dir, 'token'))),
      await runKiln(build(), { KILN_TOKEN: TOKEN }),
    ];
    for (const r of runs) {
      expect(r.code).toBe(1);
      expect(r.out).not.toMatch(/UNAUTHENTICATED/);
      expect(r.out).toMatch(/needs entitlement network\.host.*\[ENTITLEMENT_DENIED\]/);
    }
  });

  it('refuses TLS and token options without a remote farm', async () => {
    const r = await runKiln(['build', ctx, '--token', TOKEN], { KILN_ADDR: '' });
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/TLS and token options are for a remote farm/);
  });
});
