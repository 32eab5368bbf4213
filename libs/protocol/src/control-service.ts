/**
 * The grpc-js service definition of `kiln.control.v1.Control`, built from the static message
 * classes (their encode/decode are the serializers), so that the scheduler (server) and the
 * client library share one definition and no code is generated for grpc-js.
 */
import type { MethodDefinition, ServiceDefinition } from '@grpc/grpc-js';
import { kiln } from './gen/protocol.js';

const c = kiln.control.v1;

interface MessageClass<T, I> {
  encode(m: I): { finish(): Uint8Array };
  decode(b: Uint8Array): T;
}

function method<Req, ReqInit, Res, ResInit>(
  name: string,
  req: MessageClass<Req, ReqInit>,
  res: MessageClass<Res, ResInit>,
  requestStream: boolean,
  responseStream: boolean,
): MethodDefinition<ReqInit, Res> {
  return {
    path: `/kiln.control.v1.Control/${name}`,
    requestStream,
    responseStream,
    requestSerialize: (m: ReqInit) => Buffer.from(req.encode(m).finish()),
    requestDeserialize: (b: Buffer) => req.decode(b) as unknown as ReqInit,
    responseSerialize: (m: Res) => Buffer.from(res.encode(m as unknown as ResInit).finish()),
    responseDeserialize: (b: Buffer) => res.decode(b),
    originalName: name.charAt(0).toLowerCase() + name.slice(1),
  };
}

/**
 * Methods by their grpc-js names (lower camel case). Requests are the `I*` init interfaces when
 * sent and decoded message instances when received; responses are message instances.
 */
export const controlService = {
  solve: method('Solve', c.SolveRequest, c.SolveResponse, false, false),
  status: method('Status', c.StatusRequest, c.StatusResponse, false, true),
  listWorkers: method('ListWorkers', c.ListWorkersRequest, c.ListWorkersResponse, false, false),
  diskUsage: method('DiskUsage', c.DiskUsageRequest, c.DiskUsageResponse, false, false),
  prune: method('Prune', c.PruneRequest, c.UsageRecord, false, true),
  cancel: method('Cancel', c.CancelRequest, c.CancelResponse, false, false),
  session: method('Session', c.SessionMessage, c.SessionMessage, true, true),
} satisfies ServiceDefinition;

export type ControlService = typeof controlService;
