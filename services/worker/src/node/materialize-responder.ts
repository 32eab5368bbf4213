/**
 * The holder's side of lazy results: it answers `kiln.materialize.<workerId>` (`@kiln/bus`
 * materialize.ts) for the results it holds, by making each layer of the result a blob in the
 * content store (compressed and uploaded once per layer, however many ask) and replying with the
 * descriptors, base first, once every blob is in the store.
 *
 * - A result this worker does not hold, a malformed request, or a layer that cannot be made is an
 *   error reply, never a crash; the asker then treats the result as lost (the vertex reruns).
 * - Requests for different results run concurrently; the same layer is made once.
 */
import type { Msg, NatsConnection } from '@nats-io/transport-node';
import { decodeMaterializeRequest, encodeMaterializeJson, materializeSubject } from '@kiln/bus';
import type { MaterializeReply, MaterializedLayer } from '@kiln/bus';
import { KilnError } from '@kiln/protocol';
import { RequestSubscription } from './request-subscription.js';

export interface MaterializeResponderOptions {
  nc: NatsConnection;
  workerId: string;
  /** Makes a held result's layers blobs (TaskRunner.materializeResult). */
  materialize: (resultId: string) => Promise<MaterializedLayer[]>;
  /** A request failed (an error reply was sent, or the reply could not be). */
  onError?: (err: unknown, resultId?: string) => void;
}

export class MaterializeResponder {
  readonly #o: MaterializeResponderOptions;
  readonly #requests: RequestSubscription;
  /** Requests answered, and those answered with an error. */
  readonly stats = { requests: 0, errors: 0 };

  constructor(o: MaterializeResponderOptions) {
    this.#o = o;
    this.#requests = new RequestSubscription(o.nc, materializeSubject(o.workerId), (msg) => {
      void this.#answer(msg);
    });
  }

  /** Subscribes to the worker's subject. */
  start(): void {
    this.#requests.start();
  }

  /**
   * Stops answering: once this resolves, the server knows (requests get no responders at once,
   * and their askers fall back).
   */
  stop(): Promise<void> {
    return this.#requests.stop();
  }

  async #answer(msg: Msg): Promise<void> {
    this.stats.requests++;
    let reply: MaterializeReply;
    let resultId: string | undefined;
    try {
      resultId = decodeMaterializeRequest(msg.data).resultId;
      reply = { layers: await this.#o.materialize(resultId) };
    } catch (e) {
      this.stats.errors++;
      this.#o.onError?.(e, resultId);
      reply = {
        error:
          e instanceof KilnError
            ? { code: e.code, message: e.message }
            : { code: 'MATERIALIZE_FAILED', message: e instanceof Error ? e.message : String(e) },
      };
    }
    try {
      msg.respond(encodeMaterializeJson(reply));
    } catch (e) {
      this.#o.onError?.(e, resultId); // the connection is closing
    }
  }
}
