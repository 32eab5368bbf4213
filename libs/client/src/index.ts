/**
 * @kiln/client: connect to a Kiln scheduler (`kiln.control.v1.Control` over gRPC), solve,
 * stream progress with resume, list workers, cancel.
 */
export { KilnClient } from './kiln-client.js';
export type {
  ConnectOptions,
  SolveRequest,
  SolveResult,
  StatusResponse,
  WorkerRecord,
} from './kiln-client.js';
export { dockerfileInput } from './dockerfile-input.js';
