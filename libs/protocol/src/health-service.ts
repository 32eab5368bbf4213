/**
 * The grpc-js service definition of gRPC's health checking protocol, `grpc.health.v1.Health`
 * (Check and Watch; List is not served). The two messages have one field each, so they are
 * encoded here with protobufjs' wire reader and writer: no `.proto` file is loaded at run time,
 * which keeps the services bundleable (grpc-health-check loads one from its package directory).
 * Wire-compatible with grpc_health_probe, kubelet's gRPC probes and `grpcurl`.
 */
import type { MethodDefinition, ServiceDefinition } from '@grpc/grpc-js';
import $protobuf from 'protobufjs/minimal.js';

/** `HealthCheckResponse.ServingStatus`. */
export const ServingStatus = {
  UNKNOWN: 0,
  SERVING: 1,
  NOT_SERVING: 2,
  /** Watch only: the service name is not known (yet). */
  SERVICE_UNKNOWN: 3,
} as const;
export type ServingStatusName = keyof typeof ServingStatus;

export interface HealthCheckRequest {
  service: string;
}
export interface HealthCheckResponse {
  status: ServingStatusName;
}

const NAMES = Object.fromEntries(
  Object.entries(ServingStatus).map(([k, v]) => [v, k as ServingStatusName]),
) as Record<number, ServingStatusName>;

/** Reads field 1 of a one-field message (`read` takes it off the reader); skips the others. */
function decodeField1<T>(b: Uint8Array, read: (r: $protobuf.Reader) => T, fallback: T): T {
  const r = $protobuf.Reader.create(b);
  let v = fallback;
  while (r.pos < r.len) {
    const tag = r.uint32();
    if (tag >>> 3 === 1) v = read(r);
    else r.skipType(tag & 7);
  }
  return v;
}

const encodeRequest = (m: HealthCheckRequest): Buffer => {
  const w = $protobuf.Writer.create();
  if (m.service) w.uint32(10).string(m.service);
  return Buffer.from(w.finish());
};
const decodeRequest = (b: Buffer): HealthCheckRequest => ({
  service: decodeField1(b, (r) => r.string(), ''),
});
const encodeResponse = (m: HealthCheckResponse): Buffer => {
  const w = $protobuf.Writer.create();
  const n = ServingStatus[m.status];
  if (n !== 0) w.uint32(8).int32(n);
  return Buffer.from(w.finish());
};
const decodeResponse = (b: Buffer): HealthCheckResponse => ({
  status: NAMES[decodeField1(b, (r) => r.int32(), 0)] ?? 'UNKNOWN',
});

function method(
  name: string,
  responseStream: boolean,
): MethodDefinition<HealthCheckRequest, HealthCheckResponse> {
  return {
    path: `/grpc.health.v1.Health/${name}`,
    requestStream: false,
    responseStream,
    requestSerialize: encodeRequest,
    requestDeserialize: decodeRequest,
    responseSerialize: encodeResponse,
    responseDeserialize: decodeResponse,
    originalName: name.toLowerCase(),
  };
}

export const healthService = {
  check: method('Check', false),
  watch: method('Watch', true),
} satisfies ServiceDefinition;
