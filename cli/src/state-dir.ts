import { homedir } from 'node:os';
import { join } from 'node:path';

/** Where the local farm keeps its state: $KILN_STATE_DIR, else /var/lib/kiln for root, else the XDG data dir. */
export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.KILN_STATE_DIR) return env.KILN_STATE_DIR;
  if (process.getuid?.() === 0) return '/var/lib/kiln';
  return join(env.XDG_DATA_HOME || join(homedir(), '.local', 'share'), 'kiln');
}
