// Child processes that cannot outlive the test run: `@kiln/common`'s guard (child-process.ts).
export { GUARD_SCRIPT, spawnManaged } from '@kiln/common';
export type { ExitInfo, ManagedProcess, SpawnOptions } from '@kiln/common';
