/**
 * A farm without workers, for tests of the client side of a build: a real scheduler
 * (ControlServer and Dispatcher on a real nats-server) on a loopback port. A Dockerfile asking for
 * an entitlement the build does not ask for ({@link ENTITLEMENT_DOCKERFILE}) is refused at solve
 * time: proof that a command got through to the farm, with no worker needed.
 */
import type * as grpc from '@grpc/grpc-js';
import { ControlServer, Dispatcher } from '@kiln/scheduler';
import type { ControlServerOptions } from '@kiln/scheduler';
import { connect } from '@nats-io/transport-node';
import { startNats } from '../harness/index.js';

export const ENTITLEMENT_DOCKERFILE = 'FROM scratch\nRUN --network=host true\n';

export interface WorkerlessFarm {
  /** HOST:PORT of its control API. */
  addr: string;
  close(): Promise<void>;
}

export async function startWorkerlessFarm(
  o: {
    server?: Omit<ControlServerOptions, 'dispatcher'>;
    credentials?: grpc.ServerCredentials;
  } = {},
): Promise<WorkerlessFarm> {
  const nats = await startNats();
  const nc = await connect({ servers: nats.url });
  const dispatcher = await Dispatcher.start({ nc });
  const server = new ControlServer({ ...o.server, dispatcher });
  const port = await server.listen('127.0.0.1:0', o.credentials);
  return {
    addr: `127.0.0.1:${port}`,
    close: async () => {
      await server.close();
      await dispatcher.close();
      await nc.close();
      await nats.stop();
    },
  };
}
