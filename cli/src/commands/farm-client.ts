/** The farm a command talks to: `--addr`, else `$KILN_ADDR`, else the local farm (started if need be). */
import { defaultStateDir } from '../state-dir.js';
import type { Farm } from '../farm/local.js';

export async function connectFarm(addr: string | undefined, env = process.env): Promise<Farm> {
  const { localFarm, remoteFarm } = await import('../farm/local.js');
  const { idleTimeout } = await import('../farm/idle.js');
  const a = addr ?? env.KILN_ADDR;
  if (a) return remoteFarm(a);
  return localFarm({
    stateDir: defaultStateDir(env),
    insecureRegistries: [],
    idleTimeoutMs: idleTimeout(undefined, env),
    onWait: (m) => process.stderr.write(`${m}\n`),
  });
}
