/**
 * A core NATS request subject a worker answers (`kiln.checksum.<id>`, `kiln.materialize.<id>`):
 * subscribed on `start`, and on `stop` unsubscribed and flushed, so that once `stop` resolves the
 * server knows and askers get no responders at once (they fall back).
 */
import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';

export class RequestSubscription {
  #sub: Subscription | undefined;

  constructor(
    private readonly nc: NatsConnection,
    private readonly subject: string,
    private readonly answer: (msg: Msg) => void,
  ) {}

  start(): void {
    if (this.#sub) return;
    this.#sub = this.nc.subscribe(this.subject, {
      callback: (err, msg) => {
        if (!err) this.answer(msg);
      },
    });
  }

  async stop(): Promise<void> {
    if (!this.#sub) return;
    this.#sub.unsubscribe();
    this.#sub = undefined;
    if (!this.nc.isClosed()) await this.nc.flush().catch(() => undefined);
  }
}
