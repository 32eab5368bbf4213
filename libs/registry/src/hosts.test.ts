import { describe, expect, it } from 'vitest';
import { isLoopbackHost, registryBaseUrl } from './hosts.js';

describe('registry hosts', () => {
  it('maps docker.io to registry-1.docker.io over HTTPS', () => {
    expect(registryBaseUrl('docker.io', new Set()).href).toBe('https://registry-1.docker.io/');
    expect(registryBaseUrl('index.docker.io', new Set()).href).toBe(
      'https://registry-1.docker.io/',
    );
    expect(registryBaseUrl('ghcr.io', new Set()).href).toBe('https://ghcr.io/');
  });

  it('speaks plain HTTP to loopback hosts and configured insecure registries only', () => {
    for (const h of ['127.0.0.1:5000', '127.1.2.3', 'localhost:5000', 'localhost', '[::1]:5000']) {
      expect(isLoopbackHost(h)).toBe(true);
      expect(registryBaseUrl(h, new Set()).protocol).toBe('http:');
    }
    for (const h of [
      '10.0.0.1:5000',
      '128.0.0.1',
      'example.com',
      '[::2]:5000',
      'localhost.example.com',
    ]) {
      expect(isLoopbackHost(h)).toBe(false);
      expect(registryBaseUrl(h, new Set()).protocol).toBe('https:');
    }
    expect(registryBaseUrl('reg.internal:5000', new Set(['reg.internal:5000'])).href).toBe(
      'http://reg.internal:5000/',
    );
    expect(registryBaseUrl('reg.internal:5000', new Set(['reg.internal'])).protocol).toBe('http:');
    expect(registryBaseUrl('reg.internal:5000', new Set(['other.internal'])).protocol).toBe(
      'https:',
    );
  });
});
