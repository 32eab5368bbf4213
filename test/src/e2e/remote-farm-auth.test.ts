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
import { Authenticator, parseTokens } from '@kiln/scheduler';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir } from '../harness/index.js';
import { runKiln } from './run-kiln.js';
import { ENTITLEMENT_DOCKERFILE, startWorkerlessFarm } from './workerless-farm.js';
import type { WorkerlessFarm } from './workerless-farm.js';

const TOKEN = `cli-${randomUUID()}`;

let tmp: { dir: string; remove: () => void };
let farm: WorkerlessFarm;
let addr: string;
let ctx: string;

beforeAll(async () => {
  tmp = makeTempDir('remote-farm-auth');
  farm = await startWorkerlessFarm({
    server: { auth: new Authenticator({ tokens: parseTokens(`team-cli:${TOKEN}`, 'test') }) },
  });
  addr = farm.addr;
  ctx = join(tmp.dir, 'ctx');
  await mkdir(ctx, { recursive: true });
  await writeFile(join(ctx, 'Dockerfile'), ENTITLEMENT_DOCKERFILE);
  await writeFile(join(tmp.dir, 'token'), `${TOKEN}\n`);
});

afterAll(async () => {
  await farm?.close();
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
