export * from '@kiln/testing';
export { GUARD_SCRIPT, spawnManaged } from '@kiln/common';
export type { ExitInfo, ManagedProcess, SpawnOptions } from '@kiln/common';
export * from './env.js';
export * from './fixtures.js';
export * from './s3.js';
