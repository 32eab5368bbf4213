/**
 * @kiln/protocol: the wire formats every Kiln component speaks.
 * - `pb`: LLB, message for message compatible with BuildKit's solver/pb/ops.proto.
 * - `control`: the `kiln.control.v1` API between clients and the scheduler.
 * - `workerpb`: task messages between the scheduler and workers.
 * - typed errors and their gRPC status mapping; errors that name their first cause (first-cause.ts).
 */
import { pb, kiln } from './gen/protocol.js';

export { pb };
export const control = kiln.control.v1;
export const workerpb = kiln.worker.v1;
export const errorspb = kiln.errors.v1;
export { descriptor } from './gen/descriptor.js';
export * from './errors.js';
export * from './first-cause.js';
export * from './long.js';
export * from './grpc-status.js';
export { controlService } from './control-service.js';
export type { ControlService } from './control-service.js';
export * from './platform.js';
export * from './annotations.js';
export * from './truncate.js';
export { ServingStatus, healthService } from './health-service.js';
export type {
  HealthCheckRequest,
  HealthCheckResponse,
  ServingStatusName,
} from './health-service.js';
