/**
 * `kiln build --addr` offers the user's registry credentials through its session (BuildKit's
 * session/auth): the docker config the docker CLI reads (`$DOCKER_CONFIG/config.json`), with
 * `auths` or a credential helper (`credsStore`: `docker-credential-<name> get`, a script on PATH).
 * A real htpasswd docker-registry holds a private image; a real scheduler (ControlServer and
 * Dispatcher on a real nats-server) that has no credentials of its own resolves the Dockerfile's
 * `FROM` with the caller's. The Dockerfile then needs an entitlement the build does not ask for,
 * so a resolved FROM is refused at solve time (ENTITLEMENT_DENIED) without a worker, which shows
 * the credentials got through; without them the FROM's line fails, naming the registry's answer.
 */
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ControlServer, Dispatcher, registryMetaResolver } from '@kiln/scheduler';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { harnessEnv, makeTempDir, startNats, startPrivateRegistry } from '../harness/index.js';
import type { NatsServerHandle, RegistryHandle } from '../harness/index.js';
import { runKiln } from './run-kiln.js';

let tmp: { dir: string; remove: () => void };
let nats: NatsServerHandle;
let nc: NatsConnection;
let dispatcher: Dispatcher;
let server: ControlServer;
let registry: RegistryHandle;
let password = '';
let addr: string;
let ctx: string;

beforeAll(async () => {
  tmp = makeTempDir('registry-auth-cli');
  let reg;
  [nats, reg] = await Promise.all([
    startNats(),
    startPrivateRegistry(tmp.dir, harnessEnv('KILN_TEST_FIXTURE_IMAGE')),
  ]);
  ({ registry, password } = reg);
  nc = await connect({ servers: nats.url });
  dispatcher = await Dispatcher.start({ nc });
  server = new ControlServer({
    dispatcher,
    // As the scheduler's entry makes it by default: never its own docker config.
    metaResolver: registryMetaResolver({ dockerConfig: false }),
  });
  addr = `127.0.0.1:${await server.listen('127.0.0.1:0')}`;
  ctx = join(tmp.dir, 'ctx');
  mkdirSync(ctx, { recursive: true });
  writeFileSync(
    join(ctx, 'Dockerfile'),
    `FROM ${registry.addr}/private/busybox:latest\nRUN --network=host true\n`,
  );
});

afterAll(async () => {
  await server?.close();
  await dispatcher?.close();
  await nc?.close();
  await nats?.stop();
  await registry?.stop();
  tmp?.remove();
});

/** A docker config dir holding `config`. */
function dockerConfig(name: string, config: unknown): string {
  const dir = join(tmp.dir, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  return dir;
}

describe("kiln build resolves a private FROM with the user's registry credentials", () => {
  const build = (env: Record<string, string>) =>
    runKiln(['build', ctx, '--progress', 'plain', '--addr', addr], env);

  it('fails on the FROM without credentials, naming the registry', async () => {
    const r = await build({ DOCKER_CONFIG: dockerConfig('empty', {}) });
    expect(r.code).not.toBe(0);
    expect(r.out).toContain(`${registry.addr}/private/busybox:latest`);
    expect(r.out).toMatch(/requires basic auth and no credentials/);
    expect(r.out).not.toContain('ENTITLEMENT_DENIED');
  });

  it("uses the docker config's auths", async () => {
    const auth = Buffer.from(`docker:${password}`).toString('base64');
    const r = await build({
      DOCKER_CONFIG: dockerConfig('auths', { auths: { [registry.addr]: { auth } } }),
    });
    expect(r.code).not.toBe(0);
    expect(r.out).toMatch(/network\.host/);
    expect(r.out).not.toMatch(/requires basic auth/);
    // The password is never printed.
    expect(r.out).not.toContain(password);
  });

  it('uses a credential helper (credsStore)', async () => {
    const bin = join(tmp.dir, 'bin');
    mkdirSync(bin, { recursive: true });
    const helper = join(bin, 'docker-credential-kilntest');
    writeFileSync(
      helper,
      `#!/bin/sh\nread server\nprintf '{"ServerURL":"%s","Username":"docker","Secret":"${password}"}' "$server"\n`,
    );
    chmodSync(helper, 0o755);
    const path = process.env.PATH ?? '';
    const r = await build({
      DOCKER_CONFIG: dockerConfig('helper', { credsStore: 'kilntest' }),
      PATH: `${bin}:${path}`,
    }).finally(() => (process.env.PATH = path));
    expect(r.code).not.toBe(0);
    expect(r.out).toMatch(/network\.host/);
    expect(r.out).not.toMatch(/requires basic auth/);
    expect(r.out).not.toContain(password);
  });
});
