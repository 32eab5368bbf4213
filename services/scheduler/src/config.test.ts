import { describe, expect, it } from 'vitest';
import { DEFAULT_CONFIG, isLoopbackListen, loadConfig } from './config.js';
import { parseTokens } from './control/auth.js';

describe('loadConfig', () => {
  it('takes defaults < environment < flags', () => {
    expect(loadConfig({}, [])).toEqual(DEFAULT_CONFIG);
    const env = { KILN_NATS_URL: 'nats://env:4222', KILN_SCHEDULER_LISTEN: '127.0.0.1:1' };
    const c = loadConfig(env, ['--listen', '127.0.0.1:2', '--platform', 'linux/arm64/v8']);
    expect(c).toMatchObject({
      natsUrl: 'nats://env:4222',
      listen: '127.0.0.1:2',
      defaultPlatform: 'linux/arm64/v8',
    });
    expect(loadConfig({ KILN_MAX_ATTEMPTS: '5' }, []).maxAttempts).toBe(5);
    expect(
      loadConfig({ KILN_INSECURE_REGISTRIES: 'a:5000, b:5000' }, []).insecureRegistries,
    ).toEqual(['a:5000', 'b:5000']);
  });

  it('takes NATS credentials and TLS from flags over the environment, one way at a time', () => {
    const c = loadConfig(
      { KILN_NATS_USER: 'env-user', KILN_NATS_PASSWORD: 'env-pw', KILN_NATS_TLS_CA: '/ca.pem' },
      ['--nats-password', 'flag-pw', '--nats-tlscert', '/c.pem', '--nats-tlskey', '/k.pem'],
    );
    expect(c.natsAuth).toEqual({
      user: 'env-user',
      password: 'flag-pw',
      tlsCa: '/ca.pem',
      tlsCert: '/c.pem',
      tlsKey: '/k.pem',
    });
    expect(loadConfig({ KILN_NATS_CREDS: '/x.creds' }, []).natsAuth).toEqual({
      credsFile: '/x.creds',
    });
    for (const [env, argv] of [
      [{ KILN_NATS_TOKEN: 't' }, ['--nats-nkey', '/seed']],
      [{ KILN_NATS_PASSWORD: 'p' }, []],
      [{}, ['--nats-tlscert', '/c.pem']],
    ] as const)
      expect(() => loadConfig(env, argv)).toThrow(
        expect.objectContaining({ code: 'CONFIG_INVALID' }) as Error,
      );
  });

  it('takes admin tenants from flags and environment', () => {
    expect(loadConfig({}, []).adminTenants).toEqual([]);
    expect(
      loadConfig({ KILN_ADMIN_TENANTS: 'ops, sre' }, ['--admin-tenant', 'root']).adminTenants,
    ).toEqual(['root', 'ops', 'sre']);
  });

  it('takes the cache index lifetime as a duration, at least a minute', () => {
    expect(loadConfig({}, []).cacheTtlMs).toBe(24 * 3600_000);
    expect(loadConfig({ KILN_CACHE_TTL: '7d' }, []).cacheTtlMs).toBe(7 * 24 * 3600_000);
    expect(loadConfig({ KILN_CACHE_TTL: '7d' }, ['--cache-ttl', '90m']).cacheTtlMs).toBe(
      90 * 60_000,
    );
    expect(() => loadConfig({}, ['--cache-ttl', 'soon'])).toThrow(/--cache-ttl must be a duration/);
    expect(() => loadConfig({}, ['--cache-ttl', '10s'])).toThrow(/at least 1m/);
  });

  it('takes the frontend limits as key=value pairs, flag over environment', () => {
    expect(
      loadConfig({ KILN_FRONTEND_LIMITS: 'maxWordLength=4194304, maxMillis=120000' }, [])
        .frontendLimits,
    ).toEqual({ maxWordLength: 4194304, maxMillis: 120000 });
    expect(
      loadConfig({ KILN_FRONTEND_LIMITS: 'maxStages=5' }, ['--frontend-limits', 'maxStages=7'])
        .frontendLimits,
    ).toEqual({ maxStages: 7 });
    expect(() => loadConfig({ KILN_FRONTEND_LIMITS: 'maxWords=1' }, [])).toThrow(
      /frontend-limits.*maxWords/,
    );
    expect(() => loadConfig({ KILN_FRONTEND_LIMITS: 'maxStages=x' }, [])).toThrow(
      expect.objectContaining({ code: 'CONFIG_INVALID' }) as Error,
    );
  });

  it('rejects bad values with a typed error', () => {
    expect(() => loadConfig({ KILN_MAX_ATTEMPTS: 'x' }, [])).toThrow(/non-negative integer/);
    expect(() => loadConfig({}, ['--listen', 'nowhere'])).toThrow(/host:port/);
    let err: unknown;
    try {
      loadConfig({}, ['--bogus']);
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'CONFIG_INVALID' });
  });

  it('listens on loopback by default; elsewhere only with TLS and authentication, or the opt-in', () => {
    expect(DEFAULT_CONFIG.listen).toBe('127.0.0.1:8470');
    for (const a of ['127.0.0.1:1', '127.1.2.3:1', 'localhost:1', '[::1]:1', 'unix:/x.sock'])
      expect(isLoopbackListen(a)).toBe(true);
    for (const a of ['0.0.0.0:1', '10.0.0.1:1', '[::]:1', ':1', 'example.com:1'])
      expect(isLoopbackListen(a)).toBe(false);
    expect(() => loadConfig({}, ['--listen', '0.0.0.0:8470'])).toThrow(
      /refusing to serve 0\.0\.0\.0:8470 without TLS and authentication/,
    );
    // Tokens without TLS would travel in clear: still refused.
    expect(() =>
      loadConfig({ KILN_TOKENS: 'a:0123456789abcdef' }, ['--listen', '0.0.0.0:8470']),
    ).toThrow(/refusing/);
    const tls = ['--tlscert', 'c.pem', '--tlskey', 'k.pem'];
    expect(() => loadConfig({}, ['--listen', '0.0.0.0:8470', ...tls])).toThrow(/refusing/);
    expect(
      loadConfig({ KILN_TOKENS_FILE: '/t' }, ['--listen', '0.0.0.0:8470', ...tls]),
    ).toMatchObject({ tokensFile: '/t', tlsCert: 'c.pem', tlsKey: 'k.pem' });
    expect(
      loadConfig({}, ['--listen', '0.0.0.0:8470', ...tls, '--tlscacert', 'ca.pem']).tlsCaCert,
    ).toBe('ca.pem');
    expect(
      loadConfig({ KILN_INSECURE_LISTEN: '1' }, ['--listen', '0.0.0.0:8470']).insecureListen,
    ).toBe(true);
    expect(() => loadConfig({}, ['--tlscert', 'c.pem'])).toThrow(/go together/);
    expect(() => loadConfig({}, ['--tlscacert', 'ca.pem'])).toThrow(/needs --tlscert/);
  });

  it('takes entitlements and the shared cache from flags and environment', () => {
    const c = loadConfig({ KILN_ALLOW_INSECURE_ENTITLEMENTS: 'network.host' }, [
      '--allow-insecure-entitlement',
      'security.insecure',
      '--shared-cache',
    ]);
    expect(c.allowEntitlements.sort()).toEqual(['network.host', 'security.insecure']);
    expect(c.sharedCache).toBe(true);
    expect(() => loadConfig({}, ['--allow-insecure-entitlement', 'root'])).toThrow(
      /security\.insecure or network\.host/,
    );
  });
});

describe('parseTokens', () => {
  it('reads lines, comma lists and JSON; rejects bad entries', () => {
    const t = 'a'.repeat(16);
    const u = 'b'.repeat(16);
    expect(parseTokens(`# team tokens\nteam-a:${t}\n\nteam-b:${u} network.host\n`, 'f')).toEqual([
      { tenant: 'team-a', token: t, allow: [] },
      { tenant: 'team-b', token: u, allow: ['network.host'] },
    ]);
    expect(parseTokens(`x:${t},y:${u}`, 'env').map((e) => e.tenant)).toEqual(['x', 'y']);
    expect(
      parseTokens(JSON.stringify([{ tenant: 'j', token: t, allow: ['security.insecure'] }]), 'j'),
    ).toEqual([{ tenant: 'j', token: t, allow: ['security.insecure'] }]);
    expect(() => parseTokens('a:short', 'f')).toThrow(/16 to 512/);
    expect(() => parseTokens(`bad tenant!:${t}`, 'f')).toThrow();
    expect(() => parseTokens(`a:${t}\nb:${t}`, 'f')).toThrow(/twice/);
    expect(() => parseTokens(`a:${t} root`, 'f')).toThrow(/allow takes/);
  });
});
