// Deadlines of the client's short calls, against a real gRPC server that serves the control API
// but never answers (a hung scheduler: named so, since no real scheduler can be made to hang).
import * as grpc from '@grpc/grpc-js';
import { KilnError, controlService } from '@kiln/protocol';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KilnClient } from './kiln-client.js';

let server: grpc.Server;
let client: KilnClient;
const seenAuth: string[] = [];

beforeAll(async () => {
  server = new grpc.Server();
  // Every method notes the caller's token and never answers.
  const handlers: Record<string, grpc.UntypedHandleCall> = {};
  for (const name of Object.keys(controlService)) {
    handlers[name] = (call: grpc.ServerUnaryCall<unknown, unknown>) => {
      seenAuth.push(String(call.metadata.get('authorization')[0] ?? ''));
    };
  }
  server.addService(controlService, handlers);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) =>
      e ? reject(e) : resolve(p),
    ),
  );
  client = await KilnClient.connect(`127.0.0.1:${port}`, {
    token: 'tok',
    callTimeoutMs: 300,
    pruneTimeoutMs: 300,
  });
});

afterAll(() => {
  client?.close();
  server?.forceShutdown();
});

describe('client deadlines', () => {
  it('fails each short call of a scheduler that never answers with DEADLINE_EXCEEDED', async () => {
    for (const call of [
      () => client.listWorkers(),
      () => client.diskUsage(),
      () => client.cancel('b'),
      () => client.prune(),
    ]) {
      const err = await call().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(KilnError);
      expect((err as KilnError).code).toBe('DEADLINE_EXCEEDED');
    }
    // Prune, too, sends the caller's token.
    expect(seenAuth).toEqual(['Bearer tok', 'Bearer tok', 'Bearer tok', 'Bearer tok']);
  });
});
