import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Where the conformance data lives: `KILN_CONFORMANCE_DIR` when set, else `shared/conformance`
 * next to the repository (`<repo>/../shared/conformance`). This is the one place the tests of this
 * package read the environment.
 */
export function conformanceDir(): string {
  const fromEnv = process.env.KILN_CONFORMANCE_DIR;
  if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
  // This file is <repo>/libs/dockerfile/src/test-support/conformance-dir.ts.
  const repoRoot = fileURLToPath(new URL('../../../../', import.meta.url));
  return join(repoRoot, '..', 'shared', 'conformance');
}

/** A BuildKit data directory under the conformance dir, e.g. `parser/testfiles`. */
export function buildkitDataPath(...parts: string[]): string {
  return join(conformanceDir(), 'buildkit', ...parts);
}

/** The case directories under a data directory, sorted; fails loudly when the data is missing. */
export function caseDirs(dir: string): string[] {
  if (!existsSync(dir))
    throw new Error(`conformance data not found at ${dir} (set KILN_CONFORMANCE_DIR)`);
  return readdirSync(dir, { withFileTypes: true })
    .filter((e) => e.isDirectory())
    .map((e) => e.name)
    .sort();
}
