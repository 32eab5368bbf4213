// vitest global setup (configured in /vitest.config.ts): starts nats-server (JetStream),
// docker-registry and s3rver on free loopback ports, pushes the busybox fixture image, and exposes
// the addresses to tests as KILN_TEST_* variables (process.env, set before the workers start, and
// vitest provide/inject). Everything is torn down after the run.

import type { TestProject } from 'vitest/node';
import { TEST_ENV_KEYS } from './env.js';
import type { TestEnv } from './env.js';
import { pushFixtures } from './fixtures.js';
import {
  SETUP_HINT,
  startNats,
  startRegistry,
  sweepStaleTempDirs,
  whichBinary,
} from '@kiln/testing';
import type { NatsServerHandle, RegistryHandle } from '@kiln/testing';
import { startS3 } from './s3.js';
import type { S3ServerHandle } from './s3.js';

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const missing = ['nats-server', 'docker-registry'].filter((b) => !whichBinary(b));
  if (missing.length > 0) {
    throw new Error(`kiln test harness: ${missing.join(', ')} not installed; ${SETUP_HINT}`);
  }

  sweepStaleTempDirs();

  let nats: NatsServerHandle | undefined;
  let registry: RegistryHandle | undefined;
  let s3: S3ServerHandle | undefined;
  const teardown = async (): Promise<void> => {
    await Promise.allSettled([nats?.stop(), registry?.stop(), s3?.stop()]);
  };

  try {
    const [n, r, s] = await Promise.allSettled([startNats(), startRegistry(), startS3()]);
    if (n.status === 'fulfilled') nats = n.value;
    if (r.status === 'fulfilled') registry = r.value;
    if (s.status === 'fulfilled') s3 = s.value;
    for (const res of [n, r, s]) if (res.status === 'rejected') throw res.reason;
    if (!nats || !registry || !s3) throw new Error('unreachable');

    const fixture = await pushFixtures(registry.addr);
    const env: TestEnv = {
      KILN_TEST_NATS_URL: nats.url,
      KILN_TEST_REGISTRY: registry.addr,
      KILN_TEST_FIXTURE_IMAGE: fixture.image,
      KILN_TEST_S3_ENDPOINT: s3.endpoint,
      KILN_TEST_S3_ACCESS_KEY: s3.accessKey,
      KILN_TEST_S3_SECRET_KEY: s3.secretKey,
      KILN_TEST_S3_BUCKET: s3.bucket,
    };
    for (const k of TEST_ENV_KEYS) {
      process.env[k] = env[k];
      project.provide(k, env[k]);
    }
  } catch (err) {
    await teardown();
    throw err;
  }
  return teardown;
}
