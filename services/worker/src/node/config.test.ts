// Configuration layering and platform detection (pure; a fake binfmt_misc dir).
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  DEFAULT_PIDS_LIMIT,
  DEFAULT_UNPACK_MAX_BYTES,
  DEFAULT_UNPACK_MAX_FILES,
  defaultSlots,
  loadConfig,
} from './config.js';
import { resolvePlatforms } from './platforms.js';
import { EMPTY_RESULT_ID, chainIds, resultIdOf } from './result-id.js';

const dir = mkdtempSync(join(tmpdir(), 'kiln-worker-config-'));
const binfmt = join(dir, 'binfmt');
const noBinfmt = join(dir, 'none');
mkdirSync(binfmt);
writeFileSync(join(binfmt, 'qemu-aarch64'), 'enabled\ninterpreter /usr/bin/qemu-aarch64\n');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('loadConfig', () => {
  it('merges NATS credentials and TLS across the file, the environment and the flags', () => {
    const file = join(dir, 'worker-nats.json');
    writeFileSync(file, JSON.stringify({ nats: { tlsCa: '/ca.pem', user: 'file-user' } }));
    const c = loadConfig({
      argv: ['--config', file, '--nats-password', 'pw'],
      env: { KILN_NATS_USER: 'w1-user' },
      arch: 'x64',
      binfmtDir: noBinfmt,
    });
    expect(c.natsAuth).toEqual({ tlsCa: '/ca.pem', user: 'w1-user', password: 'pw' });
    expect(loadConfig({ env: {}, arch: 'x64', binfmtDir: noBinfmt }).natsAuth).toEqual({});
    expect(() =>
      loadConfig({
        env: { KILN_NATS_TOKEN: 't', KILN_NATS_USER: 'u', KILN_NATS_PASSWORD: 'p' },
        arch: 'x64',
        binfmtDir: noBinfmt,
      }),
    ).toThrow(expect.objectContaining({ code: 'WORKER_CONFIG' }) as Error);
  });

  it('layers defaults < file < environment < flags', () => {
    const file = join(dir, 'worker.json');
    writeFileSync(
      file,
      JSON.stringify({
        natsUrl: 'nats://file:4222',
        slots: 3,
        labels: { zone: 'a' },
        store: { type: 's3', endpoint: 'http://s3:9000', bucket: 'b', accessKey: 'k' },
      }),
    );
    const c = loadConfig({
      argv: ['--config', file, '--slots', '5', '--local', 'context=/src', '--id', 'w1'],
      env: { KILN_NATS_URL: 'nats://env:4222', KILN_S3_SECRET_KEY: 's', KILN_WORKER_SLOTS: '4' },
      arch: 'x64',
      binfmtDir: noBinfmt,
    });
    expect(c).toMatchObject({
      natsUrl: 'nats://env:4222',
      id: 'w1',
      slots: 5,
      labels: { zone: 'a' },
      localDirs: { context: '/src' },
      // The file's S3 fields and the environment's secret merge.
      store: {
        type: 's3',
        endpoint: 'http://s3:9000',
        bucket: 'b',
        accessKey: 'k',
        secretKey: 's',
      },
      platforms: [{ os: 'linux', architecture: 'amd64', emulated: false }],
      logLevel: 'info',
      heartbeatMs: 1_000,
    });
  });

  it('defaults to a filesystem store and rejects bad values with WORKER_CONFIG', () => {
    const c = loadConfig({ env: { KILN_STORE_DIR: '/data/store' }, arch: 'x64' });
    expect(c.store).toEqual({ type: 'fs', dir: '/data/store' });
    // Slots for latency-bound steps: at least 16, 4 per CPU on bigger machines.
    expect(c.slots).toBe(defaultSlots());
    expect([defaultSlots(1), defaultSlots(2), defaultSlots(8)]).toEqual([16, 16, 32]);
    expect(() => loadConfig({ argv: ['--slots', '0'], arch: 'x64' })).toThrow(
      expect.objectContaining({ code: 'WORKER_CONFIG' }) as Error,
    );
    expect(() => loadConfig({ argv: ['--bogus'], arch: 'x64' })).toThrow(
      expect.objectContaining({ code: 'WORKER_CONFIG' }) as Error,
    );
    expect(() => loadConfig({ env: { KILN_S3_ENDPOINT: 'http://s3' }, arch: 'x64' })).toThrow(
      /needs bucket, accessKey, secretKey/,
    );
  });
});

describe('gc settings', () => {
  it('default to BuildKit-like values and layer file < environment < flags', () => {
    const d = loadConfig({ arch: 'x64' }).gc;
    expect(d).toEqual({
      enabled: true,
      keepDurationMs: 60 * 24 * 3_600_000,
      reservedBytes: 0,
      minFreeBytes: 0,
      graceMs: 300_000,
      intervalMs: 60_000,
    });
    const file = join(dir, 'gc.json');
    writeFileSync(file, JSON.stringify({ gc: { keepStorage: '20GB', keepDuration: '7d' } }));
    const c = loadConfig({
      argv: ['--config', file, '--gc-grace', '30s', '--gc-reserved-space', '512'],
      env: { KILN_WORKER_GC_KEEP_STORAGE: '1GiB', KILN_WORKER_GC: 'on' },
      arch: 'x64',
    }).gc;
    expect(c).toMatchObject({
      enabled: true,
      keepBytes: 2 ** 30,
      keepDurationMs: 7 * 86_400_000,
      graceMs: 30_000,
      reservedBytes: 512e6,
    });
    expect(loadConfig({ argv: ['--gc', 'off'], arch: 'x64' }).gc.enabled).toBe(false);
    for (const argv of [
      ['--gc', 'maybe'],
      ['--gc-keep-storage', 'lots'],
      ['--gc-interval', '0'],
    ])
      expect(() => loadConfig({ argv, arch: 'x64' })).toThrow(
        expect.objectContaining({ code: 'WORKER_CONFIG' }) as Error,
      );
  });
});

describe('task limits and the sandbox network', () => {
  it('default to a pids limit only, and layer file < environment < flags', () => {
    const d = loadConfig({ arch: 'x64' });
    expect(d.limits).toEqual({ pids: DEFAULT_PIDS_LIMIT });
    expect(d.sandboxDeny).toEqual([]);
    const file = join(dir, 'limits.json');
    writeFileSync(
      file,
      JSON.stringify({
        limits: { memory: '2GB', pids: 100, time: '1h' },
        sandboxDeny: ['10.1.0.0/16'],
      }),
    );
    const c = loadConfig({
      argv: ['--config', file, '--cpu-shares', '512', '--pids-limit', '0'],
      env: {
        KILN_WORKER_MEMORY_LIMIT: '512MiB',
        KILN_WORKER_SANDBOX_DENY: 'store.internal,10.2.3.4',
      },
      arch: 'x64',
    });
    expect(c.limits).toEqual({ memoryBytes: 512 * 2 ** 20, cpuShares: 512, timeMs: 3_600_000 });
    expect(c.sandboxDeny).toEqual(['store.internal', '10.2.3.4']);
    for (const argv of [
      ['--memory-limit', 'lots'],
      ['--pids-limit', '1.5'],
      ['--cpu-shares', '1'],
      ['--time-limit', 'soon'],
    ])
      expect(() => loadConfig({ argv, arch: 'x64' })).toThrow(
        expect.objectContaining({ code: 'WORKER_CONFIG' }) as Error,
      );
  });
});

describe('unpack limits', () => {
  it('default to 16 GB and a million entries; file < environment < flags; 0 is none', () => {
    expect(loadConfig({ arch: 'x64' }).unpack).toEqual({
      maxBytes: DEFAULT_UNPACK_MAX_BYTES,
      maxEntries: DEFAULT_UNPACK_MAX_FILES,
    });
    const file = join(dir, 'unpack.json');
    writeFileSync(file, JSON.stringify({ limits: { unpackSize: '1GB', unpackFiles: 10 } }));
    const c = loadConfig({
      argv: ['--config', file, '--unpack-max-files', '0'],
      env: { KILN_WORKER_UNPACK_MAX_SIZE: '64MiB' },
      arch: 'x64',
    });
    expect(c.unpack).toEqual({ maxBytes: 64 * 2 ** 20 });
    for (const argv of [
      ['--unpack-max-size', 'huge'],
      ['--unpack-max-files', '2.5'],
    ])
      expect(() => loadConfig({ argv, arch: 'x64' })).toThrow(
        expect.objectContaining({ code: 'WORKER_CONFIG' }) as Error,
      );
  });
});

describe('resolvePlatforms', () => {
  it('detects the native platform and adds emulated ones only with their binfmt handler', () => {
    expect(resolvePlatforms({ arch: 'arm64' })).toEqual([
      { os: 'linux', architecture: 'arm64', emulated: false },
    ]);
    expect(resolvePlatforms({ arch: 'x64', emulate: ['linux/arm64'], binfmtDir: binfmt })).toEqual([
      { os: 'linux', architecture: 'amd64', emulated: false },
      { os: 'linux', architecture: 'arm64', emulated: true },
    ]);
    expect(() =>
      resolvePlatforms({ arch: 'x64', emulate: ['linux/arm64'], binfmtDir: noBinfmt }),
    ).toThrow(/no qemu binfmt handler/);
    expect(
      resolvePlatforms({
        arch: 'x64',
        explicit: ['linux/arm64/v8=emulated', 'linux/amd64'],
        binfmtDir: binfmt,
      }),
    ).toEqual([
      { os: 'linux', architecture: 'arm64', emulated: true },
      { os: 'linux', architecture: 'amd64', emulated: false },
    ]);
  });
});

describe('result ids', () => {
  it('are OCI chain IDs of the layers; no layers is the empty result', () => {
    const d1 = `sha256:${'1'.repeat(64)}`;
    const d2 = `sha256:${'2'.repeat(64)}`;
    const ids = chainIds([d1, d2]);
    expect(ids[0]).toBe(d1);
    // chainID(L1) = sha256("<chainID(L0)> <diffID(L1)>"), as containerd's identity.ChainID.
    expect(ids[1]).toBe(`sha256:${createHash('sha256').update(`${d1} ${d2}`).digest('hex')}`);
    expect(resultIdOf([d1, d2])).toBe(ids[1]);
    expect(resultIdOf([])).toBe(EMPTY_RESULT_ID);
  });
});
