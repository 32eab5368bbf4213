import { status as GrpcCode } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { KilnError, registerErrorClass } from './errors.js';
import { GrpcStatus, fromGrpcError, grpcCodeFor } from './grpc-status.js';
import { toGrpcStatus } from './server.js';

class VertexFailed extends KilnError {
  constructor(
    message: string,
    readonly digest: string,
  ) {
    super('VERTEX_FAILED', message, { details: { digest } });
  }
}
registerErrorClass('VERTEX_FAILED', (m, d) => new VertexFailed(m, String(d.digest)));

describe('gRPC status mapping', () => {
  it("numbers its status codes as gRPC (grpc-js's enum) does", () => {
    for (const [name, code] of Object.entries(GrpcStatus))
      expect(GrpcCode[name as keyof typeof GrpcCode]).toBe(code);
  });

  it('round-trips a registered typed error with its details', () => {
    const st = toGrpcStatus(new VertexFailed('exit code 2', 'sha256:abc'));
    expect(st.code).toBe(GrpcCode.UNKNOWN);
    const back = fromGrpcError({ ...st, message: st.details });
    expect(back).toBeInstanceOf(VertexFailed);
    expect((back as VertexFailed).digest).toBe('sha256:abc');
    expect(back.message).toBe('exit code 2');
  });

  it('keeps code, retryable and mixed detail types for unregistered codes', () => {
    const err = new KilnError('STORE_UNAVAILABLE', 'store down', {
      retryable: true,
      details: { attempts: 3, bucket: 'b', fatal: false },
    });
    const st = toGrpcStatus(err);
    expect(st.code).toBe(GrpcCode.UNAVAILABLE);
    const back = fromGrpcError(st);
    expect(back.code).toBe('STORE_UNAVAILABLE');
    expect(back.retryable).toBe(true);
    expect(back.details).toEqual({ attempts: 3, bucket: 'b', fatal: false });
  });

  it('cuts a large message and detail strings with a marker, keeping head and tail', () => {
    const big = `start ${'x'.repeat(200_000)} end`;
    const st = toGrpcStatus(new KilnError('BIG', big, { details: { note: 'y'.repeat(5000) } }));
    expect(st.details!.length).toBeLessThanOrEqual(1000);
    const trailer = st.metadata!.get('kiln-error-bin')[0] as Buffer;
    expect(trailer.length).toBeLessThan(6 * 1024);
    const back = fromGrpcError(st);
    expect(back.message.length).toBeLessThanOrEqual(4000);
    expect(back.message).toMatch(/^start x+…\[\d+ characters truncated\]…x+ end$/);
    expect(String(back.details.note)).toMatch(/characters truncated/);
    // Small messages are untouched.
    expect(fromGrpcError(toGrpcStatus(new KilnError('SMALL', 'fine'))).message).toBe('fine');
  });

  it('maps codes by convention', () => {
    expect(grpcCodeFor(new KilnError('BLOB_NOT_FOUND', 'x'))).toBe(GrpcCode.NOT_FOUND);
    expect(grpcCodeFor(new KilnError('LLB_CYCLE', 'x'))).toBe(GrpcCode.INVALID_ARGUMENT);
    expect(grpcCodeFor(new KilnError('CANCELED', 'x'))).toBe(GrpcCode.CANCELLED);
    expect(grpcCodeFor(new KilnError('ENTITLEMENT_DENIED', 'x'))).toBe(GrpcCode.PERMISSION_DENIED);
    expect(grpcCodeFor(new KilnError('UNAUTHENTICATED', 'x'))).toBe(GrpcCode.UNAUTHENTICATED);
  });

  it('wraps plain errors and statuses without Kiln details', () => {
    const st = toGrpcStatus(new Error('boom'));
    expect(st.code).toBe(GrpcCode.INTERNAL);
    const back = fromGrpcError({ code: GrpcCode.UNAVAILABLE, details: 'conn refused' });
    expect(back.code).toBe('UNAVAILABLE');
    expect(back.retryable).toBe(true);
  });
});
