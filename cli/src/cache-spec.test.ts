import { describe, expect, it } from 'vitest';
import { BuildOptionError, parseCacheSpec } from './build-options.js';

describe('--cache-to / --cache-from', () => {
  it("parses buildx's syntax", () => {
    expect(parseCacheSpec('type=local,dest=/c,mode=max', '--cache-to')).toEqual({
      type: 'local',
      attrs: { dest: '/c', mode: 'max' },
    });
    expect(parseCacheSpec('reg.example/app:cache', '--cache-from')).toEqual({
      type: 'registry',
      attrs: { ref: 'reg.example/app:cache' },
    });
    expect(parseCacheSpec('ref=reg.example/app:cache,mode=max', '--cache-to')).toEqual({
      type: 'registry',
      attrs: { ref: 'reg.example/app:cache', mode: 'max' },
    });
    expect(parseCacheSpec('type=inline', '--cache-to')).toEqual({ type: 'inline', attrs: {} });
  });

  it("gives an s3 cache the client's AWS credentials unless the spec has its own", () => {
    const env = { AWS_ACCESS_KEY_ID: 'AK', AWS_SECRET_ACCESS_KEY: 'SK', AWS_SESSION_TOKEN: 'T' };
    expect(parseCacheSpec('type=s3,bucket=b,region=r', '--cache-to', env).attrs).toEqual({
      bucket: 'b',
      region: 'r',
      access_key_id: 'AK',
      secret_access_key: 'SK',
      session_token: 'T',
    });
    expect(
      parseCacheSpec(
        'type=s3,bucket=b,region=r,access_key_id=X,secret_access_key=Y',
        '--cache-to',
        env,
      ).attrs.access_key_id,
    ).toBe('X');
  });

  it('refuses what cannot work, before any farm is reached', () => {
    for (const [spec, flag] of [
      ['type=local', '--cache-to'],
      ['type=local,dest=/c', '--cache-from'],
      ['type=registry,mode=max', '--cache-to'],
      ['type=gha', '--cache-to'],
      ['type=inline', '--cache-from'],
      ['type=s3,region=r', '--cache-to'],
    ] as const)
      expect(() => parseCacheSpec(spec, flag), spec).toThrow(BuildOptionError);
  });
});
