// The client's gRPC transport (grpc-h2.ts) against a real grpc-js server (the scheduler's server
// library), over TCP and a unix socket: messages, metadata both ways, typed statuses from
// trailers, cancellation seen by the server, a server that goes away mid-stream, a connection
// that cannot be made, the message size bound.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { GrpcStatus } from '@kiln/protocol';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GrpcChannel, MAX_RECEIVE_MESSAGE, Metadata, grpcTimeout } from './grpc-h2.js';
import type { ServiceError } from './grpc-h2.js';

const str = {
  requestSerialize: (s: string) => Buffer.from(s),
  requestDeserialize: (b: Buffer) => b.toString(),
  responseSerialize: (s: string) => Buffer.from(s),
  responseDeserialize: (b: Buffer) => b.toString(),
};
const service = {
  echo: { path: '/t.T/Echo', requestStream: false, responseStream: false, ...str },
  fail: { path: '/t.T/Fail', requestStream: false, responseStream: false, ...str },
  hang: { path: '/t.T/Hang', requestStream: false, responseStream: false, ...str },
  big: { path: '/t.T/Big', requestStream: false, responseStream: false, ...str },
  count: { path: '/t.T/Count', requestStream: false, responseStream: true, ...str },
  chat: { path: '/t.T/Chat', requestStream: true, responseStream: true, ...str },
} satisfies grpc.ServiceDefinition;

let dir: string;
let server: grpc.Server;
let port: number;
const started: string[] = [];
const cancelled: string[] = [];

function serve(s: grpc.Server): void {
  s.addService(service, {
    echo: (call: grpc.ServerUnaryCall<string, string>, cb: grpc.sendUnaryData<string>) => {
      const md = new grpc.Metadata();
      md.set('x-seen', String(call.metadata.get('x-token')[0] ?? ''));
      call.sendMetadata(md);
      cb(null, `echo ${call.request}`);
    },
    fail: (_call: grpc.ServerUnaryCall<string, string>, cb: grpc.sendUnaryData<string>) => {
      const md = new grpc.Metadata();
      md.set('detail-bin', Buffer.from([1, 2, 3, 250]));
      cb({ code: grpc.status.NOT_FOUND, details: 'no such thing: 100% gone', metadata: md });
    },
    hang: (call: grpc.ServerUnaryCall<string, string>) => {
      started.push(call.request);
      call.on('cancelled', () => cancelled.push(call.request));
    },
    big: (_call: grpc.ServerUnaryCall<string, string>, cb: grpc.sendUnaryData<string>) =>
      cb(null, 'x'.repeat(MAX_RECEIVE_MESSAGE + 1)),
    count: (call: grpc.ServerWritableStream<string, string>) => {
      const n = Number(call.request);
      for (let i = 1; i <= n; i++) call.write(String(i));
      if (n >= 0) call.end();
      // A negative count: headers only, and the stream stays open (until the server goes away).
      else call.sendMetadata(new grpc.Metadata());
    },
    chat: (call: grpc.ServerDuplexStream<string, string>) => {
      call.on('data', (m: string) => call.write(`re ${m}`));
      call.on('end', () => call.end());
    },
  });
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kiln-grpc-h2-'));
  server = new grpc.Server();
  serve(server);
  port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) =>
      e ? reject(e) : resolve(p),
    ),
  );
  await new Promise<number>((resolve, reject) =>
    server.bindAsync(
      `unix:${join(dir, 'g.sock')}`,
      grpc.ServerCredentials.createInsecure(),
      (e, p) => (e ? reject(e) : resolve(p)),
    ),
  );
});

afterAll(async () => {
  server?.forceShutdown();
  await rm(dir, { recursive: true, force: true });
});

function unary(
  ch: GrpcChannel,
  path: string,
  req: string,
  md = new Metadata(),
  deadline?: number,
): Promise<{ res?: string; err?: ServiceError }> {
  return new Promise((resolve) => {
    ch.makeUnaryRequest(
      path,
      str.requestSerialize,
      str.responseDeserialize,
      req,
      md,
      deadline ? { deadline } : {},
      (err, res) => resolve(err ? { err } : { res: res as string }),
    );
  });
}

const ready = (ch: GrpcChannel, ms = 5_000): Promise<Error | undefined> =>
  new Promise((resolve) => ch.waitForReady(Date.now() + ms, resolve));

describe('grpc-h2', () => {
  it('makes unary calls with metadata, over TCP and a unix socket', async () => {
    for (const target of [`127.0.0.1:${port}`, `unix:${join(dir, 'g.sock')}`]) {
      const ch = new GrpcChannel(target, undefined);
      expect(await ready(ch)).toBeUndefined();
      const md = new Metadata();
      md.set('x-token', 'abc');
      expect(await unary(ch, service.echo.path, 'hi', md)).toEqual({ res: 'echo hi' });
      // Several calls at once on the one connection.
      const all = await Promise.all([1, 2, 3].map((i) => unary(ch, service.echo.path, `${i}`)));
      expect(all.map((r) => r.res)).toEqual(['echo 1', 'echo 2', 'echo 3']);
      ch.close();
    }
  });

  it('gives a failed call its status, message and trailers (binary values as bytes)', async () => {
    const ch = new GrpcChannel(`127.0.0.1:${port}`, undefined);
    const { err } = await unary(ch, service.fail.path, 'x');
    expect(err?.code).toBe(GrpcStatus.NOT_FOUND);
    expect(err?.details).toBe('no such thing: 100% gone');
    expect(err?.metadata.get('detail-bin')).toEqual([Buffer.from([1, 2, 3, 250])]);
    expect(err?.message).toBe('5 NOT_FOUND: no such thing: 100% gone');
    // No stack of the transport's frames (formatting one costs the CLI milliseconds).
    expect(err?.stack).toBe('Error: 5 NOT_FOUND: no such thing: 100% gone');
    // An unknown method: the server's own status.
    expect((await unary(ch, '/t.T/Nope', 'x')).err?.code).toBe(GrpcStatus.UNIMPLEMENTED);
    ch.close();
  });

  it('streams messages in order, with the response headers first', async () => {
    const ch = new GrpcChannel(`127.0.0.1:${port}`, undefined);
    const call = ch.makeServerStreamRequest(
      service.count.path,
      str.requestSerialize,
      str.responseDeserialize,
      '500',
      new Metadata(),
    );
    let headers: Metadata | undefined;
    call.on('metadata', (m: Metadata) => (headers = m));
    const got: string[] = [];
    for await (const m of call as AsyncIterable<string>) {
      expect(headers).toBeDefined();
      got.push(m);
    }
    expect(got).toEqual(Array.from({ length: 500 }, (_, i) => String(i + 1)));
    ch.close();
  });

  it('runs a bidi stream; cancelling a call fails it CANCELLED and the server sees it', async () => {
    const ch = new GrpcChannel(`127.0.0.1:${port}`, undefined);
    const chat = ch.makeBidiStreamRequest(
      service.chat.path,
      str.requestSerialize,
      str.responseDeserialize,
      new Metadata(),
    );
    const replies: string[] = [];
    chat.on('data', (m: string) => replies.push(m));
    const ended = new Promise((r) => chat.on('end', r));
    chat.write('a');
    chat.write('b');
    chat.end();
    await ended;
    expect(replies).toEqual(['re a', 're b']);

    let cancelErr: ServiceError | null | undefined;
    const call = ch.makeUnaryRequest(
      service.hang.path,
      str.requestSerialize,
      str.responseDeserialize,
      'cancel-me',
      new Metadata(),
      {},
      (e) => (cancelErr = e),
    );
    await waitFor(() => started.includes('cancel-me'));
    call.cancel();
    await waitFor(() => cancelled.includes('cancel-me'));
    expect(cancelErr?.code).toBe(GrpcStatus.CANCELLED);
    // A deadline: DEADLINE_EXCEEDED, and the server's call is cancelled too.
    const late = await unary(ch, service.hang.path, 'late', new Metadata(), Date.now() + 200);
    expect(late.err?.code).toBe(GrpcStatus.DEADLINE_EXCEEDED);
    await waitFor(() => cancelled.includes('late'));
    ch.close();
    // A closed channel takes no more calls.
    expect((await unary(ch, service.echo.path, 'x')).err?.code).toBe(GrpcStatus.UNAVAILABLE);
  });

  it('sends deadlines as grpc-timeout of at most 8 digits', () => {
    const now = Date.now();
    expect(grpcTimeout(now + 60_000)).toMatch(/^(6000\d|59\d{3})m$/);
    expect(grpcTimeout(now - 5)).toBe('1m');
    expect(grpcTimeout(now + 200_000_000)).toMatch(/^\d{1,8}S$/);
    expect(grpcTimeout(now + 1e13)).toMatch(/^\d{1,8}[MH]$/);
  });

  it('refuses a message over 4 MiB with RESOURCE_EXHAUSTED', async () => {
    const ch = new GrpcChannel(`127.0.0.1:${port}`, undefined);
    const { err } = await unary(ch, service.big.path, 'x');
    expect(err?.code).toBe(GrpcStatus.RESOURCE_EXHAUSTED);
    ch.close();
  });

  it('fails calls UNAVAILABLE when there is no server or it goes away mid-stream', async () => {
    const nowhere = new GrpcChannel(`unix:${join(dir, 'none.sock')}`, undefined);
    const t0 = Date.now();
    expect(await ready(nowhere, 300)).toBeInstanceOf(Error);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    expect((await unary(nowhere, service.echo.path, 'x')).err?.code).toBe(GrpcStatus.UNAVAILABLE);
    nowhere.close();

    const s2 = new grpc.Server();
    serve(s2);
    const p2 = await new Promise<number>((resolve, reject) =>
      s2.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) =>
        e ? reject(e) : resolve(p),
      ),
    );
    const ch = new GrpcChannel(`127.0.0.1:${p2}`, undefined);
    const call = ch.makeServerStreamRequest(
      service.count.path,
      str.requestSerialize,
      str.responseDeserialize,
      '-1',
      new Metadata(),
    );
    const failed = new Promise<ServiceError>((r) => call.on('error', r));
    call.resume();
    await new Promise((r) => call.once('metadata', r));
    s2.forceShutdown();
    expect((await failed).code).toBe(GrpcStatus.UNAVAILABLE);
    ch.close();
  });
});

async function waitFor(cond: () => boolean, ms = 10_000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}
