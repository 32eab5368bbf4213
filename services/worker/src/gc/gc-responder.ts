/**
 * The worker's side of the control API's DiskUsage and Prune: it answers `kiln.gc.<workerId>`
 * (`@kiln/bus` gc.ts) with its usage records, or prunes and answers what it removed. A malformed
 * request or a failure is an error reply (`GC_PROTOCOL`, `GC_FILTER_INVALID`, `GC_FAILED`), never
 * a crash.
 */
import type { Msg, NatsConnection } from '@nats-io/transport-node';
import { decodeGcRequest, encodeGcJson, gcSubject } from '@kiln/bus';
import type { GcReply } from '@kiln/bus';
import { KilnError } from '@kiln/protocol';
import { RequestSubscription } from '../node/request-subscription.js';
import type { WorkerGc } from './worker-gc.js';

export interface GcResponderOptions {
  nc: NatsConnection;
  workerId: string;
  gc: WorkerGc;
  onError?: (err: unknown) => void;
}

export class GcResponder {
  readonly #requests: RequestSubscription;

  constructor(private readonly o: GcResponderOptions) {
    this.#requests = new RequestSubscription(o.nc, gcSubject(o.workerId), (msg) => {
      void this.#answer(msg);
    });
  }

  start(): void {
    this.#requests.start();
  }

  stop(): Promise<void> {
    return this.#requests.stop();
  }

  async #answer(msg: Msg): Promise<void> {
    let reply: GcReply;
    try {
      const req = decodeGcRequest(msg.data);
      const records =
        req.op === 'du'
          ? await this.o.gc.diskUsage(req.filter)
          : await this.o.gc.prune({
              filter: req.filter,
              all: req.all,
              keepDurationMs: req.keepDurationMs,
              keepBytes: req.keepBytes,
            });
      reply = { records };
    } catch (e) {
      this.o.onError?.(e);
      reply = {
        error:
          e instanceof KilnError
            ? { code: e.code, message: e.message }
            : { code: 'GC_FAILED', message: e instanceof Error ? e.message : String(e) },
      };
    }
    try {
      msg.respond(encodeGcJson(reply));
    } catch (e) {
      this.o.onError?.(e); // the connection is closing
    }
  }
}
