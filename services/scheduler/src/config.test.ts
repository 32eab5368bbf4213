import { describe, expect, it } from 'vitest';
import { DEFAULT_CONFIG, loadConfig } from './config.js';

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
});
