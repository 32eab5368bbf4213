/**
 * OpenTelemetry names, in one place (BullMQ's habit). Libraries use `@opentelemetry/api` only;
 * spans are recorded when a service entry point installs an SDK, and cost nothing otherwise.
 */
import { trace } from '@opentelemetry/api';
import type { Tracer } from '@opentelemetry/api';

export const TRACER_NAME = 'kiln';

export const Attr = {
  buildId: 'kiln.build.id',
  vertexDigest: 'kiln.vertex.digest',
  vertexName: 'kiln.vertex.name',
  workerId: 'kiln.worker.id',
  cacheHit: 'kiln.cache.hit',
  cacheKey: 'kiln.cache.key',
  opKind: 'kiln.op.kind',
  taskId: 'kiln.task.id',
} as const;

export const SpanName = {
  /** The client's Solve call (the root of a build's trace when the caller records spans). */
  solve: 'kiln.solve',
  build: 'kiln.build',
  vertex: 'kiln.vertex',
  task: 'kiln.task',
} as const;

export function tracer(): Tracer {
  return trace.getTracer(TRACER_NAME);
}
