// The scheduler's checksum client against a real nats-server (the harness's, a fresh one for this
// file) and hand-written responders on the workers' subjects: answers, memoization, and every
// fallback (error reply, no responders, no answer in time, malformed reply, invalid worker id).
import { createHash } from 'node:crypto';
import {
  checksumSubject,
  decodeChecksumRequest,
  encodeChecksumJson,
  type ChecksumDepSpec,
} from '@kiln/bus';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { natsContentChecksums } from './content-checksums.js';
import type { ChecksumFallback } from './content-checksums.js';
import { startNats } from '@kiln/testing';
import type { NatsServerHandle } from '@kiln/testing';

let nats: NatsServerHandle;
let nc: NatsConnection;
const subs: Subscription[] = [];
const asked = new Map<string, number>();

const spec = (selectors: string[]): ChecksumDepSpec => ({
  selectors,
  wildcard: false,
  followLinks: false,
  includePatterns: [],
  excludePatterns: [],
});
const digestOf = (resultId: string, selectors: string[]): string =>
  `sha256:${createHash('sha256')
    .update(`${resultId} ${selectors.join(',')}`)
    .digest('hex')}`;

/** A worker's subject answered by `answer` (undefined: never answers); counts requests. */
function respond(workerId: string, answer: (data: Uint8Array) => Uint8Array | undefined): void {
  subs.push(
    nc.subscribe(checksumSubject(workerId), {
      callback: (err, msg) => {
        if (err) return;
        asked.set(workerId, (asked.get(workerId) ?? 0) + 1);
        const reply = answer(msg.data);
        if (reply) msg.respond(reply);
      },
    }),
  );
}

beforeAll(async () => {
  nats = await startNats();
  nc = await connect({ servers: nats.url });
  respond('w-ok', (data) => {
    const r = decodeChecksumRequest(data);
    return encodeChecksumJson({
      results: r.deps.map((d) => ({ digest: digestOf(r.resultId, d.selectors) })),
    });
  });
  respond('w-unknown', () =>
    encodeChecksumJson({ error: { code: 'CHECKSUM_RESULT_UNKNOWN', message: 'not held' } }),
  );
  respond('w-missing', () =>
    encodeChecksumJson({ results: [{ error: { code: 'CHECKSUM_FAILED', message: 'no file' } }] }),
  );
  respond('w-garbage', () => new TextEncoder().encode('{"what": 1}'));
  respond('w-silent', () => undefined);
  await nc.flush();
});

afterAll(async () => {
  for (const s of subs) s.unsubscribe();
  await nc?.close();
  await nats?.stop();
});

describe('natsContentChecksums', () => {
  it('asks the holder once per (result id, spec); any holder gives the same answer', async () => {
    const c = natsContentChecksums(nc, { timeoutMs: 5_000 });
    const want = digestOf('r-1', ['/a']);
    // Concurrent asks for the same thing share one request.
    expect(
      await Promise.all([
        c.checksum('w-ok', 'r-1', spec(['/a'])),
        c.checksum('w-ok', 'r-1', spec(['/a'])),
      ]),
    ).toEqual([want, want]);
    expect(asked.get('w-ok')).toBe(1);
    // Remembered: no request, even to a holder that is gone.
    expect(await c.checksum('w-gone', 'r-1', spec(['/a']))).toBe(want);
    expect(asked.get('w-ok')).toBe(1);
    expect(await c.checksum('w-ok', 'r-1', spec(['/b']))).toBe(digestOf('r-1', ['/b']));
    expect(asked.get('w-ok')).toBe(2);
  });

  it('falls back (undefined, never a rejection) when the holder cannot answer', async () => {
    const events: { holder: string; reason: ChecksumFallback; code?: string }[] = [];
    const c = natsContentChecksums(nc, {
      timeoutMs: 300,
      onFallback: (e) =>
        events.push({ holder: e.holder, reason: e.reason, ...(e.code ? { code: e.code } : {}) }),
    });
    const ask = (holder: string) => c.checksum(holder, 'r-2', spec(['/a']));
    expect(await ask('w-unknown')).toBeUndefined();
    expect(await ask('w-missing')).toBeUndefined();
    expect(await ask('w-garbage')).toBeUndefined();
    expect(await ask('w-gone')).toBeUndefined();
    expect(await ask('w-silent')).toBeUndefined();
    expect(await ask('not a worker id!')).toBeUndefined();
    expect(events).toEqual([
      { holder: 'w-unknown', reason: 'error-reply', code: 'CHECKSUM_RESULT_UNKNOWN' },
      { holder: 'w-missing', reason: 'error-reply', code: 'CHECKSUM_FAILED' },
      { holder: 'w-garbage', reason: 'bad-reply' },
      { holder: 'w-gone', reason: 'no-responders' },
      { holder: 'w-silent', reason: 'no-answer' },
      { holder: 'not a worker id!', reason: 'invalid-holder' },
    ]);
    // Failures are not remembered: a holder that answers later is asked again.
    const before = asked.get('w-unknown');
    expect(await ask('w-unknown')).toBeUndefined();
    expect(asked.get('w-unknown')).toBe((before ?? 0) + 1);
    expect(await ask('w-ok')).toBe(digestOf('r-2', ['/a']));
  });
});
