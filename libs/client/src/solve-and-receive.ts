/**
 * A solve whose exporters send their artifacts over a session, and the wait for them. When the
 * scheduler sending them goes away after the solve answered (the session reopens on another
 * scheduler, which knows nothing of them: `SESSION_EXPORT_INTERRUPTED`), the build is solved
 * again on the scheduler now in use (its steps come back cached, its exports are sent again),
 * under a build id of its own (`<id>-r<n>`: the first may still be known there as finished).
 */
import { KilnError } from '@kiln/protocol';
import type { KilnClient, SolveRequest, SolveResult } from './kiln-client.js';
import type { BuildSession } from './session.js';

/** Solves up to this many times for one build's artifacts. */
const ATTEMPTS = 3;

export async function solveAndReceive(
  client: KilnClient,
  session: BuildSession,
  req: SolveRequest,
  o: { signal?: AbortSignal; onError?: (err: unknown) => Promise<never> } = {},
): Promise<SolveResult> {
  for (let attempt = 1; ; attempt++) {
    const r = attempt === 1 ? req : { ...req, buildId: `${req.buildId}-r${attempt}` };
    const res = await client.solve(r, { signal: o.signal }).catch(async (err: unknown) => {
      if (o.onError) return o.onError(err);
      throw err;
    });
    try {
      await session.exportsWritten(Number(res.exporterResponse['export.count'] ?? 0));
      return res;
    } catch (err) {
      if (
        attempt >= ATTEMPTS ||
        o.signal?.aborted ||
        !(err instanceof KilnError) ||
        err.code !== 'SESSION_EXPORT_INTERRUPTED'
      )
        throw err;
    }
  }
}
