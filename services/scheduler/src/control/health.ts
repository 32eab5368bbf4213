/**
 * gRPC's health checking protocol (`grpc.health.v1.Health`, Check and Watch) for the control
 * server; the wire definition is `@kiln/protocol`'s `healthService`.
 *
 * Contract: two names answer, `""` (the whole server) and `kiln.control.v1.Control`, always
 * together; any other is NOT_FOUND for Check and SERVICE_UNKNOWN for Watch. They are NOT_SERVING
 * until the server listens with its dispatcher up, SERVING then, NOT_SERVING while the bus is
 * disconnected and from the moment the server starts to drain (for good). Watch sends the
 * current status at once and then every change. Health calls are not authenticated: they say
 * nothing about builds, and probes (kubelet, grpc_health_probe) carry no token.
 */
import * as grpc from '@grpc/grpc-js';
import { healthService } from '@kiln/protocol';
import type { HealthCheckRequest, HealthCheckResponse, ServingStatusName } from '@kiln/protocol';

/** The service name the control API is checked by (besides `""`). */
export const CONTROL_SERVICE_NAME = 'kiln.control.v1.Control';

const NAMES: ReadonlySet<string> = new Set(['', CONTROL_SERVICE_NAME]);

type Watcher = grpc.ServerWritableStream<HealthCheckRequest, HealthCheckResponse>;

export class ControlHealth {
  #draining = false;
  #status: ServingStatusName = 'NOT_SERVING';
  readonly #watchers = new Set<Watcher>();

  /** Registers Check and Watch on `server`. */
  addToServer(server: grpc.Server): void {
    server.addService(healthService, {
      check: (
        call: grpc.ServerUnaryCall<HealthCheckRequest, HealthCheckResponse>,
        cb: grpc.sendUnaryData<HealthCheckResponse>,
      ) => {
        if (!NAMES.has(call.request.service))
          cb({ code: grpc.status.NOT_FOUND, details: `unknown service ${call.request.service}` });
        else cb(null, { status: this.#status });
      },
      watch: (call: Watcher) => {
        const known = NAMES.has(call.request.service);
        call.write({ status: known ? this.#status : 'SERVICE_UNKNOWN' });
        if (!known) return; // the set of names never changes: nothing more to say
        this.#watchers.add(call);
        call.on('cancelled', () => this.#watchers.delete(call));
        call.on('close', () => this.#watchers.delete(call));
      },
    });
  }

  /** The current status of both names. */
  get status(): ServingStatusName {
    return this.#status;
  }

  /** SERVING or NOT_SERVING; ignored once draining. */
  setServing(serving: boolean): void {
    if (this.#draining) return;
    this.#set(serving ? 'SERVING' : 'NOT_SERVING');
  }

  /** NOT_SERVING for good, told to every watcher, whose streams then end: the server stops. */
  drain(): void {
    this.#set('NOT_SERVING');
    this.#draining = true;
    for (const w of this.#watchers) w.end();
    this.#watchers.clear();
  }

  #set(s: ServingStatusName): void {
    if (s === this.#status) return;
    this.#status = s;
    for (const w of this.#watchers) w.write({ status: s });
  }
}
