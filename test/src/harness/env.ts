// The variables through which tests reach the real services started by the global setup
// (global-setup.ts). They are set in process.env before the test workers start, and also exposed
// through vitest's provide/inject under the same names.

// Type-only import: makes the module resolvable for the ProvidedContext augmentation below.
import type {} from 'vitest';

export const TEST_ENV_KEYS = [
  'KILN_TEST_NATS_URL',
  'KILN_TEST_REGISTRY',
  'KILN_TEST_FIXTURE_IMAGE',
  'KILN_TEST_S3_ENDPOINT',
  'KILN_TEST_S3_ACCESS_KEY',
  'KILN_TEST_S3_SECRET_KEY',
  'KILN_TEST_S3_BUCKET',
] as const;

export type TestEnvKey = (typeof TEST_ENV_KEYS)[number];

/**
 * KILN_TEST_NATS_URL        nats://127.0.0.1:PORT (nats-server 2.9 with JetStream)
 * KILN_TEST_REGISTRY        127.0.0.1:PORT (plain-http OCI registry, deletes enabled)
 * KILN_TEST_FIXTURE_IMAGE   127.0.0.1:PORT/busybox:latest (OCI index: linux/amd64, linux/arm64)
 * KILN_TEST_S3_ENDPOINT     http://127.0.0.1:PORT (s3rver)
 * KILN_TEST_S3_ACCESS_KEY   S3RVER
 * KILN_TEST_S3_SECRET_KEY   S3RVER
 * KILN_TEST_S3_BUCKET       kiln-test
 */
export type TestEnv = Record<TestEnvKey, string>;

declare module 'vitest' {
  export interface ProvidedContext {
    KILN_TEST_NATS_URL: string;
    KILN_TEST_REGISTRY: string;
    KILN_TEST_FIXTURE_IMAGE: string;
    KILN_TEST_S3_ENDPOINT: string;
    KILN_TEST_S3_ACCESS_KEY: string;
    KILN_TEST_S3_SECRET_KEY: string;
    KILN_TEST_S3_BUCKET: string;
  }
}

/** The test services' addresses from process.env; throws when the global setup did not run. */
export function testEnv(): TestEnv {
  const missing = TEST_ENV_KEYS.filter((k) => !process.env[k]);
  if (missing.length > 0) {
    throw new Error(
      `${missing.join(', ')} not set: run the tests with \`npx vitest run\` from the repo root ` +
        '(the global setup test/src/harness/global-setup.ts starts the services)',
    );
  }
  return Object.fromEntries(TEST_ENV_KEYS.map((k) => [k, process.env[k] ?? ''])) as TestEnv;
}
