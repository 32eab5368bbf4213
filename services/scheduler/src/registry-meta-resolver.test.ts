// The frontend's image metadata resolver against a real htpasswd docker-registry: a FROM of a
// private image resolves with the scheduler's credentials, and fails typed without them.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseImageReference } from '@kiln/llb';
import { RegistryClient } from '@kiln/registry';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registryMetaResolver } from './registry-meta-resolver.js';
import { copyPlatformManifest, harnessEnv, makeTempDir, startPrivateRegistry } from '@kiln/testing';
import type { RegistryHandle } from '@kiln/testing';

const linuxAmd64 = { os: 'linux', architecture: 'amd64' };

describe('registryMetaResolver on a private registry', () => {
  let registry: RegistryHandle;
  let tmp: ReturnType<typeof makeTempDir>;
  let password = '';
  let manifestDigest = '';
  const ref = (): string => `${registry.addr}/private/busybox:latest`;

  beforeAll(async () => {
    const fixture = harnessEnv('KILN_TEST_FIXTURE_IMAGE');
    tmp = makeTempDir('meta-resolver');
    ({ registry, password, manifestDigest } = await startPrivateRegistry(tmp.dir, fixture));
  });
  afterAll(async () => {
    await registry?.stop();
    tmp?.remove();
  });

  it('resolves with the docker config credentials, pinned to the digest, with the config', async () => {
    const cfg = join(tmp.dir, 'config.json');
    const auth = Buffer.from(`docker:${password}`).toString('base64');
    await writeFile(cfg, JSON.stringify({ auths: { [registry.addr]: { auth } } }));
    const meta = await registryMetaResolver({ dockerConfig: cfg })(ref(), linuxAmd64);
    expect(meta.digest).toBe(manifestDigest);
    expect(JSON.parse(Buffer.from(meta.config as Uint8Array).toString('utf8'))).toMatchObject({
      architecture: 'amd64',
      os: 'linux',
    });
  });

  it('resolves with credentials handed in by the caller', async () => {
    const resolve = registryMetaResolver({
      dockerConfig: false,
      credentials: (host) =>
        host === registry.addr ? { username: 'docker', password } : undefined,
    });
    expect((await resolve(ref(), linuxAmd64)).digest).toBe(manifestDigest);
  });

  it('fails with a typed auth error without credentials, and names a missing platform', async () => {
    await expect(
      registryMetaResolver({ dockerConfig: false })(ref(), linuxAmd64),
    ).rejects.toMatchObject({ code: 'REGISTRY_AUTH' });
    await expect(
      registryMetaResolver({
        dockerConfig: false,
        credentials: () => ({ username: 'docker', password }),
      })(ref(), { os: 'linux', architecture: 's390x' }),
    ).rejects.toMatchObject({ code: 'REGISTRY_PLATFORM_NOT_FOUND' });
  });

  it('answers a moved tag with what it names now, never a config kept for the old digest', async () => {
    const client = new RegistryClient({
      dockerConfig: false,
      credentials: () => ({ username: 'docker', password }),
    });
    const fixture = parseImageReference(harnessEnv('KILN_TEST_FIXTURE_IMAGE'));
    const dest = { domain: registry.addr, path: 'private/moving' };
    const moving = `${registry.addr}/private/moving:latest`;
    const arch = (meta: { config: unknown }): unknown =>
      (
        JSON.parse(Buffer.from(meta.config as Uint8Array).toString('utf8')) as {
          architecture?: string;
        }
      ).architecture;
    const resolve = registryMetaResolver({
      dockerConfig: false,
      credentials: () => ({ username: 'docker', password }),
    });
    const amd64 = await copyPlatformManifest(client, fixture, client, dest, 'latest', 'amd64');
    const first = await resolve(moving, linuxAmd64);
    const again = await resolve(moving, linuxAmd64);
    expect([first.digest, again.digest]).toEqual([amd64, amd64]);
    expect([arch(first), arch(again)]).toEqual(['amd64', 'amd64']);

    const arm64 = await copyPlatformManifest(client, fixture, client, dest, 'latest', 'arm64');
    expect(arm64).not.toBe(amd64);
    await expect(resolve(moving, linuxAmd64)).rejects.toMatchObject({
      code: 'REGISTRY_PLATFORM_NOT_FOUND',
    });
    const moved = await resolve(moving, { os: 'linux', architecture: 'arm64' });
    expect(moved.digest).toBe(arm64);
    expect(arch(moved)).toBe('arm64');
  });
});
