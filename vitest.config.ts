import { defineConfig } from 'vitest/config';

// One vitest run for the whole workspace. Sources are resolved through the `kiln-source` export
// condition, so tests run against src/ without a build. The global setup starts the real services
// (nats-server, docker-registry, s3rver) that tests reach through environment variables.
export default defineConfig({
  resolve: { conditions: ['kiln-source'] },
  test: {
    include: ['**/src/**/*.test.ts'],
    exclude: ['**/node_modules/**', '**/dist/**'],
    globalSetup: ['./test/src/harness/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
  },
});
