/**
 * The reference BuildKit v0.11.6 for differential and interop tests: buildkitd started through
 * `../shared/tools/buildkit/buildkit.sh` (or `$KILN_BUILDKIT_DIR/buildkit.sh`) with its state
 * under a directory of the test's, trusting the given registry, and buildctl to drive it.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT } from '../harness/index.js';

const run = promisify(execFile);

export const BUILDKIT_SCRIPT = join(
  process.env.KILN_BUILDKIT_DIR ?? join(REPO_ROOT, '../shared/tools/buildkit'),
  'buildkit.sh',
);

export interface ReferenceBuildkit {
  buildctl: string;
  addr: string;
  /**
   * `buildctl build` of the Dockerfile frontend with `ctx` as its context and Dockerfile
   * directory, plain progress, and `extra` arguments (outputs, opts, caches); returns what it
   * printed (stdout and stderr).
   */
  build(ctx: string, extra: string[]): Promise<string>;
  /** `buildctl prune --all`: buildkitd's own cache emptied. */
  prune(): Promise<void>;
  /** Stops buildkitd (also when it was never fully started); never throws. */
  stop(): Promise<void>;
}

/** Starts buildkitd with its root, socket and log under `dir`. */
export async function startReferenceBuildkit(
  dir: string,
  registry: string,
): Promise<ReferenceBuildkit> {
  if (!existsSync(BUILDKIT_SCRIPT))
    throw new Error(`the reference BuildKit is not at ${BUILDKIT_SCRIPT} (set KILN_BUILDKIT_DIR)`);
  const stop = async (): Promise<void> => {
    await run('bash', [BUILDKIT_SCRIPT, 'stop', dir]).catch(() => undefined);
  };
  const buildctl = join((await run('bash', [BUILDKIT_SCRIPT, 'bin'])).stdout.trim(), 'buildctl');
  let addr: string;
  try {
    addr = (await run('bash', [BUILDKIT_SCRIPT, 'start', dir, registry])).stdout.trim();
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    buildctl,
    addr,
    async build(ctx, extra) {
      const { stdout, stderr } = await run(
        buildctl,
        [
          '--addr',
          addr,
          'build',
          '--progress',
          'plain',
          '--frontend',
          'dockerfile.v0',
          '--local',
          `context=${ctx}`,
          '--local',
          `dockerfile=${ctx}`,
          ...extra,
        ],
        { maxBuffer: 64 * 1024 * 1024 },
      );
      return stdout + stderr;
    },
    async prune() {
      await run(buildctl, ['--addr', addr, 'prune', '--all']);
    },
    stop,
  };
}
