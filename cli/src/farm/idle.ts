import { BuildOptionError } from '../build-options.js';
import { DEFAULT_IDLE_TIMEOUT_MS, parseDuration } from './local.js';

/** The local farm's idle timeout: the flag, else `$KILN_FARM_IDLE_TIMEOUT`, else the default. */
export function idleTimeout(flag: string | undefined, env = process.env): number {
  const v = flag ?? env.KILN_FARM_IDLE_TIMEOUT;
  if (v === undefined || v === '') return DEFAULT_IDLE_TIMEOUT_MS;
  try {
    return parseDuration(v);
  } catch (cause) {
    throw new BuildOptionError(
      `${flag !== undefined ? '--idle-timeout' : 'KILN_FARM_IDLE_TIMEOUT'}: ${(cause as Error).message}`,
    );
  }
}
