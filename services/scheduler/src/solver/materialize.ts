/**
 * Lazy results, the scheduler's side: asks the worker holding a result to make its layers blobs in
 * the store (`kiln.materialize.<workerId>`, `@kiln/bus` materialize.ts), for a solve whose caller
 * reads the result from the store. Never rejects: no responders (the holder is gone), a timeout,
 * an error reply or a malformed one all give `undefined` (the result is lost; the solver reruns
 * the vertex that made it).
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { decodeMaterializeReply, encodeMaterializeJson, materializeSubject } from '@kiln/bus';
import type { Materializer } from './solve.js';

export interface NatsMaterializerOptions {
  /** How long the holder may take to compress and upload; default 120 s. */
  timeoutMs?: number;
  /** Why a result could not be had (logs). */
  onLost?: (e: { holder: string; resultId: string; reason: string }) => void;
}

export function natsMaterializer(
  nc: NatsConnection,
  o: NatsMaterializerOptions = {},
): Materializer {
  const timeout = o.timeoutMs ?? 120_000;
  return async (holder, resultId) => {
    const lost = (reason: string): undefined => {
      o.onLost?.({ holder, resultId, reason });
      return undefined;
    };
    try {
      const msg = await nc.request(
        materializeSubject(holder),
        encodeMaterializeJson({ resultId }),
        {
          timeout,
        },
      );
      const reply = decodeMaterializeReply(msg.data);
      if ('error' in reply) return lost(`${reply.error.code}: ${reply.error.message}`);
      return reply.layers;
    } catch (e) {
      return lost(e instanceof Error ? e.message : String(e));
    }
  };
}
