/**
 * Selector-level content keys, the scheduler's side: asks the worker that holds an input's result
 * for the content checksum of the paths an op reads in it (`kiln.checksum.<workerId>`, `@kiln/bus`
 * checksum.ts). The answer replaces the input's result id in the vertex's fast key (fast-key.ts).
 *
 * Never fails: no responders (the holder is gone), a timeout, an error reply (it no longer holds
 * the result, a selected path is missing) all give `undefined`, and the caller keys by the result
 * id instead (correct, merely less cache-friendly). Digests are remembered per (result id, spec):
 * results are immutable and any holder gives the same answer.
 */
import { RequestError } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';
import {
  checksumSubject,
  decodeChecksumReply,
  encodeChecksumJson,
  normalizeChecksumDep,
} from '@kiln/bus';
import type { ChecksumDepSpec } from '@kiln/bus';

/** Why a checksum could not be had (the key then uses the result id). */
export type ChecksumFallback =
  'invalid-holder' | 'no-responders' | 'no-answer' | 'error-reply' | 'bad-reply';

export interface ContentChecksums {
  /**
   * The checksum of `spec` inside `resultId`, asked from `holder`; undefined when it cannot be
   * had. Never rejects.
   */
  checksum(holder: string, resultId: string, spec: ChecksumDepSpec): Promise<string | undefined>;
}

export interface NatsContentChecksumsOptions {
  /** How long to wait for the holder's answer; default 3 s. */
  timeoutMs?: number;
  /** Digests remembered; default 10,000. */
  memoEntries?: number;
  /** Each fallback, with the worker's error code for an error reply (logs, tests). */
  onFallback?: (e: {
    holder: string;
    resultId: string;
    reason: ChecksumFallback;
    code?: string;
  }) => void;
}

export function natsContentChecksums(
  nc: NatsConnection,
  o: NatsContentChecksumsOptions = {},
): ContentChecksums {
  const timeout = o.timeoutMs ?? 3_000;
  const memoEntries = o.memoEntries ?? 10_000;
  const memo = new Map<string, string>();
  const inflight = new Map<string, Promise<string | undefined>>();

  const ask = async (
    holder: string,
    resultId: string,
    spec: ChecksumDepSpec,
  ): Promise<string | undefined> => {
    const fallback = (reason: ChecksumFallback, code?: string): undefined => {
      o.onFallback?.({ holder, resultId, reason, ...(code ? { code } : {}) });
      return undefined;
    };
    let subject: string;
    try {
      subject = checksumSubject(holder);
    } catch {
      return fallback('invalid-holder');
    }
    let data: Uint8Array;
    try {
      const msg = await nc.request(subject, encodeChecksumJson({ resultId, deps: [spec] }), {
        timeout,
      });
      data = msg.data;
    } catch (e) {
      const none = e instanceof RequestError && e.isNoResponders();
      return fallback(none ? 'no-responders' : 'no-answer');
    }
    try {
      const reply = decodeChecksumReply(data);
      if ('error' in reply) return fallback('error-reply', reply.error.code);
      const entry = reply.results[0];
      if (!entry) return fallback('bad-reply');
      if ('error' in entry) return fallback('error-reply', entry.error.code);
      return entry.digest;
    } catch {
      return fallback('bad-reply');
    }
  };

  return {
    checksum(holder, resultId, spec) {
      const norm = normalizeChecksumDep(spec);
      const key = `${resultId}\0${JSON.stringify(norm)}`;
      const known = memo.get(key);
      if (known !== undefined) return Promise.resolve(known);
      let p = inflight.get(key);
      if (!p) {
        p = ask(holder, resultId, norm)
          .catch(() => undefined) // `ask` does not reject; a throwing onFallback must not either
          .then((digest) => {
            inflight.delete(key);
            if (digest !== undefined) {
              memo.set(key, digest);
              if (memo.size > memoEntries) memo.delete(memo.keys().next().value!);
            }
            return digest;
          });
        inflight.set(key, p);
      }
      return p;
    },
  };
}
