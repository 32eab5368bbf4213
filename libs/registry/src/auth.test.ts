import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { parseImageReference } from '@kiln/llb';
import { sha256Digest } from '@kiln/store';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dockerConfigCredentials, parseChallenges } from './auth.js';
import { RegistryClient } from './client.js';
import type { Repository, ResolvedReference } from './client.js';
import { RegistryAuthError } from './errors.js';
import {
  harnessEnv,
  startAuthRegistry,
  startFaultProxy,
  startTokenServer,
  waitFor,
  makeTempDir,
  copyPlatformManifest,
} from '@kiln/testing';
import type { RegistryHandle, TokenServer } from '@kiln/testing';

describe('parseChallenges', () => {
  it('parses bearer challenges with quoted parameters', () => {
    expect(
      parseChallenges(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"',
      ),
    ).toEqual([
      {
        scheme: 'bearer',
        params: {
          realm: 'https://auth.docker.io/token',
          service: 'registry.docker.io',
          scope: 'repository:library/busybox:pull',
        },
      },
    ]);
  });
  it('parses several challenges, unquoted values and escapes, and drops unknown schemes', () => {
    expect(
      parseChallenges(
        'Negotiate abc, Basic realm=reg, Bearer realm="http://x/t?a=\\"b\\"", error="invalid_token"',
      ),
    ).toEqual([
      { scheme: 'basic', params: { realm: 'reg' } },
      { scheme: 'bearer', params: { realm: 'http://x/t?a="b"', error: 'invalid_token' } },
    ]);
    expect(parseChallenges(null)).toEqual([]);
  });
});

describe('dockerConfigCredentials', () => {
  it('reads base64 auth and username/password entries; Docker Hub keys serve docker.io', async () => {
    const tmp = makeTempDir('dockercfg');
    try {
      const path = join(tmp.dir, 'config.json');
      await writeFile(
        path,
        JSON.stringify({
          auths: {
            'https://index.docker.io/v1/': {
              auth: Buffer.from('hubuser:hub:pass').toString('base64'),
            },
            'http://127.0.0.1:5000': { username: 'local', password: 'secret' },
            'ghcr.io': {},
          },
        }),
      );
      const creds = dockerConfigCredentials(path);
      expect(await creds('docker.io')).toEqual({ username: 'hubuser', password: 'hub:pass' });
      expect(await creds('registry-1.docker.io')).toEqual({
        username: 'hubuser',
        password: 'hub:pass',
      });
      expect(await creds('127.0.0.1:5000')).toEqual({ username: 'local', password: 'secret' });
      expect(await creds('ghcr.io')).toBeUndefined();
      expect(
        await dockerConfigCredentials(join(tmp.dir, 'missing.json'))('docker.io'),
      ).toBeUndefined();
      await writeFile(join(tmp.dir, 'bad.json'), '{');
      expect(() => dockerConfigCredentials(join(tmp.dir, 'bad.json'))('x')).toThrow(
        RegistryAuthError,
      );
    } finally {
      tmp.remove();
    }
  });
});

const FIXTURE = parseImageReference(harnessEnv('KILN_TEST_FIXTURE_IMAGE'));
const plain = new RegistryClient({ dockerConfig: false });

/** Copies the fixture's amd64 manifest (config + layer) to `dest` with `client`; returns the manifest digest. */
function copyAmd64(client: RegistryClient, dest: Repository, tag: string): Promise<string> {
  return copyPlatformManifest(plain, FIXTURE, client, dest, tag);
}

describe('bearer token auth against a real token-auth registry', () => {
  let tokens: TokenServer;
  let registry: RegistryHandle;
  const users = { alice: 'wonderland' };
  beforeAll(async () => {
    tokens = await startTokenServer({
      service: 'kiln-test',
      issuer: 'kiln-test-issuer',
      users,
      anonymousPull: false,
    });
    registry = await startAuthRegistry({
      token: {
        realm: tokens.realm,
        service: 'kiln-test',
        issuer: 'kiln-test-issuer',
        rootCertBundle: tokens.certPath,
      },
    });
  });
  afterAll(async () => {
    await registry?.stop();
    await tokens?.stop();
  });

  it('pushes and pulls with credentials from the callback, reusing one token per scope', async () => {
    const client = new RegistryClient({
      dockerConfig: false,
      credentials: (host) =>
        host === registry.addr ? { username: 'alice', password: 'wonderland' } : undefined,
    });
    const dest: Repository = { domain: registry.addr, path: 'team/busybox' };
    const before = tokens.requests.length;
    const digest = await copyAmd64(client, dest, 'v1');
    const pushTokens = tokens.requests.slice(before);
    expect(pushTokens.length).toBeGreaterThan(0);
    expect(pushTokens.every((r) => r.authenticated && r.account === 'alice')).toBe(true);
    expect(pushTokens.some((r) => r.scopes.includes('repository:team/busybox:pull,push'))).toBe(
      true,
    );
    // Several blobs and a manifest went up, but the token for the push scope was fetched once.
    expect(
      pushTokens.filter((r) => r.scopes.includes('repository:team/busybox:pull,push')),
    ).toHaveLength(1);

    const r = await client.resolve(`${registry.addr}/team/busybox:v1`);
    expect(r.descriptor.digest).toBe(digest);

    // A cross-repo mount asks for push on the target and pull on the source in one token.
    const layerDesc = (await client.fetchManifest(dest, r.descriptor)).document;
    if (layerDesc.kind !== 'manifest') throw new Error('expected a manifest');
    const mountTokens = tokens.requests.length;
    const mounted = await client.pushBlob(
      { domain: registry.addr, path: 'team/other' },
      layerDesc.manifest.layers[0]!,
      Buffer.alloc(0),
      {
        mountFrom: ['team/busybox'],
      },
    );
    expect(mounted.outcome).toBe('mounted');
    expect(tokens.requests.slice(mountTokens).map((t) => t.scopes)).toContainEqual([
      'repository:team/busybox:pull',
      'repository:team/other:pull,push',
    ]);
    const m = await client.fetchManifest(dest, r.descriptor);
    if (m.document.kind !== 'manifest') throw new Error('expected a manifest');
    const layer = m.document.manifest.layers[0]!;
    const chunks: Buffer[] = [];
    for await (const c of await client.fetchBlob(dest, layer)) chunks.push(c as Buffer);
    expect(sha256Digest(Buffer.concat(chunks))).toBe(layer.digest);
  });

  it('reads credentials from a docker config.json by default', async () => {
    const tmp = makeTempDir('dockercfg');
    try {
      const path = join(tmp.dir, 'config.json');
      await writeFile(
        path,
        JSON.stringify({
          auths: { [registry.addr]: { auth: Buffer.from('alice:wonderland').toString('base64') } },
        }),
      );
      const client = new RegistryClient({ dockerConfig: path });
      await copyAmd64(
        new RegistryClient({ dockerConfig: path }),
        { domain: registry.addr, path: 'team/cfg' },
        'latest',
      );
      const r = await client.resolve(`${registry.addr}/team/cfg:latest`);
      expect(r.ref.digest).toBe(r.descriptor.digest);
    } finally {
      tmp.remove();
    }
  });

  it('runs credential helpers (credHelpers over credsStore, auths when a helper knows nothing)', async () => {
    const tmp = makeTempDir('credhelper');
    const path = process.env.PATH;
    try {
      // A real helper program speaking the docker CLI's protocol: server on stdin, JSON out.
      const helper = (name: string, body: string): Promise<void> =>
        writeFile(join(tmp.dir, `docker-credential-${name}`), `#!/bin/sh\n${body}\n`, {
          mode: 0o755,
        });
      await helper(
        'kiln-right',
        `read server; [ "$1" = get ] && [ "$server" = "${registry.addr}" ] && ` +
          `echo '{"ServerURL":"'$server'","Username":"alice","Secret":"wonderland"}' && exit 0; ` +
          `echo 'credentials not found in native keychain'; exit 1`,
      );
      await helper('kiln-wrong', `echo '{"Username":"alice","Secret":"wrong"}'`);
      await helper('kiln-none', `echo 'credentials not found in native keychain'; exit 1`);
      await helper('kiln-broken', `echo oops >&2; exit 3`);
      process.env.PATH = `${tmp.dir}:${path ?? ''}`;
      const config = async (doc: object): Promise<string> => {
        const p = join(tmp.dir, `config-${Math.random().toString(36).slice(2)}.json`);
        await writeFile(p, JSON.stringify(doc));
        return p;
      };
      const ref = `${registry.addr}/team/cfg:latest`;
      const resolveWith = (doc: object): Promise<ResolvedReference> =>
        config(doc).then((p) => new RegistryClient({ dockerConfig: p }).resolve(ref));
      // credHelpers for the host wins over credsStore.
      const viaHost = await resolveWith({
        credsStore: 'kiln-wrong',
        credHelpers: { [registry.addr]: 'kiln-right' },
      });
      expect(viaHost.descriptor.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
      expect((await resolveWith({ credsStore: 'kiln-right' })).descriptor.digest).toBe(
        viaHost.descriptor.digest,
      );
      await expect(resolveWith({ credsStore: 'kiln-wrong' })).rejects.toBeInstanceOf(
        RegistryAuthError,
      );
      // A helper that knows nothing: the auths entry.
      const auth = Buffer.from('alice:wonderland').toString('base64');
      await expect(
        resolveWith({ credsStore: 'kiln-none', auths: { [registry.addr]: { auth } } }),
      ).resolves.toBeDefined();
      await expect(resolveWith({ credsStore: 'kiln-broken' })).rejects.toThrow(
        /docker-credential-kiln-broken get exited with 3/,
      );
      await expect(resolveWith({ credsStore: 'kiln-missing' })).rejects.toThrow(
        /running docker-credential-kiln-missing/,
      );
    } finally {
      process.env.PATH = path;
      tmp.remove();
    }
  });

  it('fails with RegistryAuthError without credentials or with a wrong password', async () => {
    await copyAmd64(
      new RegistryClient({
        dockerConfig: false,
        credentials: () => ({ username: 'alice', password: 'wonderland' }),
      }),
      { domain: registry.addr, path: 'team/private' },
      'latest',
    );
    const anonymous = new RegistryClient({ dockerConfig: false });
    await expect(anonymous.resolve(`${registry.addr}/team/private:latest`)).rejects.toBeInstanceOf(
      RegistryAuthError,
    );
    const wrong = new RegistryClient({
      dockerConfig: false,
      credentials: () => ({ username: 'alice', password: 'nope' }),
    });
    const err = await wrong
      .resolve(`${registry.addr}/team/private:latest`)
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RegistryAuthError);
    expect((err as RegistryAuthError).message).toContain('alice');
    expect((err as RegistryAuthError).retryable).toBe(false);
  });

  it('gets an anonymous pull token when the token server allows anonymous pulls', async () => {
    const anonTokens = await startTokenServer({
      service: 'kiln-anon',
      issuer: 'kiln-anon-issuer',
      users,
      anonymousPull: true,
    });
    const reg = await startAuthRegistry({
      token: {
        realm: anonTokens.realm,
        service: 'kiln-anon',
        issuer: 'kiln-anon-issuer',
        rootCertBundle: anonTokens.certPath,
      },
    });
    try {
      const alice = new RegistryClient({
        dockerConfig: false,
        credentials: () => ({ username: 'alice', password: 'wonderland' }),
      });
      const digest = await copyAmd64(alice, { domain: reg.addr, path: 'public/busybox' }, 'latest');
      const anonymous = new RegistryClient({ dockerConfig: false });
      const before = anonTokens.requests.length;
      const r = await anonymous.resolve(`${reg.addr}/public/busybox:latest`);
      expect(r.descriptor.digest).toBe(digest);
      expect(anonTokens.requests.slice(before)).toEqual([
        { account: undefined, authenticated: false, scopes: ['repository:public/busybox:pull'] },
      ]);
      // Anonymous push is refused: the token carries pull only.
      const blob = Buffer.from('anonymous push');
      await expect(
        anonymous.pushBlob(
          { domain: reg.addr, path: 'public/busybox' },
          { digest: sha256Digest(blob), size: blob.length },
          () => Readable.from([blob]),
        ),
      ).rejects.toBeInstanceOf(RegistryAuthError);
    } finally {
      await reg.stop();
      await anonTokens.stop();
    }
  });
});

describe('basic auth against a real htpasswd registry', () => {
  let registry: RegistryHandle;
  let password = '';
  let tmp: ReturnType<typeof makeTempDir>;
  beforeAll(async () => {
    tmp = makeTempDir('htpasswd');
    // The registry provisions a missing htpasswd file with user `docker` and a random password it
    // logs: a real bcrypt entry without an htpasswd tool or bcrypt library.
    registry = await startAuthRegistry({
      htpasswd: { realm: 'kiln-basic', path: join(tmp.dir, 'htpasswd') },
    });
    await waitFor('the provisioned password in the registry log', () =>
      /password=(\S+) user=docker/.test(registry.process.output()),
    );
    password = /password=(\S+) user=docker/.exec(registry.process.output())![1]!;
  });
  afterAll(async () => {
    await registry?.stop();
    tmp?.remove();
  });

  it('pushes and pulls with Basic credentials', async () => {
    const client = new RegistryClient({
      dockerConfig: false,
      credentials: () => ({ username: 'docker', password }),
    });
    const digest = await copyAmd64(
      client,
      { domain: registry.addr, path: 'basic/busybox' },
      'latest',
    );
    const r = await client.resolve(`${registry.addr}/basic/busybox:latest`);
    expect(r.descriptor.digest).toBe(digest);
  });

  it('never sends credentials to a redirect target on another origin', async () => {
    const client = new RegistryClient({
      dockerConfig: false,
      credentials: () => ({ username: 'docker', password }),
    });
    await copyAmd64(client, { domain: registry.addr, path: 'basic/redirected' }, 'latest');
    // "cdn": a proxy in front of the unauthenticated shared registry, which has the same blobs.
    const cdn = await startFaultProxy(harnessEnv('KILN_TEST_REGISTRY'));
    const front = await startFaultProxy(registry.addr, (m, path) => {
      const blob = /\/blobs\/(sha256:[0-9a-f]{64})$/.exec(path);
      return m === 'GET' && blob
        ? { kind: 'redirect', location: `http://${cdn.addr}/v2/${FIXTURE.path}/blobs/${blob[1]}` }
        : undefined;
    });
    try {
      const repo: Repository = { domain: front.addr, path: 'basic/redirected' };
      const r = await client.resolve({ ...repo, tag: 'latest' });
      const m = await client.fetchManifest(repo, r.descriptor);
      if (m.document.kind !== 'manifest') throw new Error('expected a manifest');
      const layer = m.document.manifest.layers[0]!;
      const chunks: Buffer[] = [];
      for await (const c of await client.fetchBlob(repo, layer)) chunks.push(c as Buffer);
      expect(sha256Digest(Buffer.concat(chunks))).toBe(layer.digest);
      const blobAt = front.log.indexOf(`GET /v2/basic/redirected/blobs/${layer.digest}`);
      expect(front.authorizations[blobAt]).toMatch(/^Basic /);
      expect(cdn.log).toEqual([`GET /v2/${FIXTURE.path}/blobs/${layer.digest}`]);
      expect(cdn.authorizations).toEqual([undefined]);
    } finally {
      await front.stop();
      await cdn.stop();
    }
  });

  it('fails with RegistryAuthError without credentials or with a wrong password', async () => {
    await expect(
      new RegistryClient({ dockerConfig: false }).resolve(`${registry.addr}/basic/busybox:latest`),
    ).rejects.toBeInstanceOf(RegistryAuthError);
    const wrong = new RegistryClient({
      dockerConfig: false,
      credentials: () => ({ username: 'docker', password: 'wrong' }),
    });
    await expect(wrong.resolve(`${registry.addr}/basic/busybox:latest`)).rejects.toBeInstanceOf(
      RegistryAuthError,
    );
  });
});
