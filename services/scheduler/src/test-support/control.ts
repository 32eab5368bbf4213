/**
 * Test support for the control API suites (used by `*.test.ts` only).
 *
 * - In-process workers: `@kiln/bus`'s `TaskConsumer` (the workers' half of the task bus, the one
 *   the worker service runs), with {@link testExecutor} as its task runner.
 * - {@link testExecutor}: a small executor that really runs each task's op, trivially: it decodes
 *   the op, reports a log line, and returns synthetic outputs computed deterministically from the
 *   vertex and its inputs' result ids (so equal work gives equal results). Exec args steer it:
 *   `fail [message]` fails the task (non-retryable), `gate <name>` waits until the test opens the gate,
 *   `block` runs until its signal aborts.
 * - {@link TcpProxy}: a TCP proxy whose connections a test can cut, to drop a client's stream.
 */
import { createHash } from 'node:crypto';
import { createServer, connect as netConnect } from 'node:net';
import type { Server, Socket } from 'node:net';
import type { RunTask } from '@kiln/bus';
import { KilnError, pb } from '@kiln/protocol';

const sha = (s: string): string => `sha256:${createHash('sha256').update(s).digest('hex')}`;

/** One run of a task by the test executor. */
export interface Run {
  workerId: string;
  taskId: string;
  buildId: string;
  vertex: string;
  cacheKey: string;
  args: string[];
  aborted: boolean;
  preferredWorker: string;
  inputs: string[];
}

/** Gates that `gate <name>` tasks wait on. */
export class Gates {
  readonly #open = new Set<string>();
  readonly #waiting = new Map<string, (() => void)[]>();

  open(name: string): void {
    this.#open.add(name);
    for (const f of this.#waiting.get(name) ?? []) f();
    this.#waiting.delete(name);
  }

  wait(name: string, signal: AbortSignal): Promise<void> {
    if (this.#open.has(name)) return Promise.resolve();
    return new Promise((resolve) => {
      const list = this.#waiting.get(name) ?? [];
      list.push(resolve);
      this.#waiting.set(name, list);
      signal.addEventListener('abort', () => resolve(), { once: true });
    });
  }
}

/** The result id the test executor gives a vertex with these input result ids. */
export function testResultId(vertex: string, inputResultIds: readonly string[], index = 0): string {
  return sha(['test-result', vertex, String(index), ...inputResultIds].join('\n'));
}

export function testExecutor(workerId: string, runs: Run[], gates: Gates): RunTask {
  return async (task, signal, progress) => {
    const op = pb.Op.decode(task.op);
    const args = op.exec?.meta?.args ?? [];
    const inputs = task.inputs.map((i) => i.resultId ?? '');
    const run: Run = {
      workerId,
      taskId: task.taskId,
      buildId: task.buildId,
      vertex: task.vertexDigest,
      cacheKey: task.cacheKey,
      args,
      aborted: false,
      preferredWorker: task.preferredWorker,
      inputs,
    };
    runs.push(run);
    signal.addEventListener('abort', () => (run.aborted = true), { once: true });
    progress({ lines: [`run ${op.exec ? args.join(' ') : (op.source?.identifier ?? 'op')}`] });
    if (args[0] === 'gate') await gates.wait(args[1] ?? '', signal);
    if (args[0] === 'block')
      await new Promise<void>((r) => signal.addEventListener('abort', () => r(), { once: true }));
    if (args[0] === 'fail')
      throw new KilnError('TEST_EXEC_FAILED', args[1] ?? 'process exited with code 1');
    let n = 1;
    for (const m of op.exec?.mounts ?? []) n = Math.max(n, Number(m.output) + 1);
    return {
      outputs: Array.from({ length: n }, (_, i) => {
        const resultId = testResultId(task.vertexDigest, inputs, i);
        return {
          resultId,
          layers: [
            {
              digest: sha(`blob ${resultId}`),
              diffId: sha(`tar ${resultId}`),
              size: 1024 * (inputs.length + 1),
              mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
            },
          ],
        };
      }),
    };
  };
}

/** A TCP proxy to `target`; `cut()` destroys every open connection (new ones are accepted). */
export class TcpProxy {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  connections = 0;

  private constructor(server: Server) {
    this.#server = server;
  }

  static async start(targetPort: number): Promise<TcpProxy & { port: number }> {
    const server = createServer();
    const proxy = new TcpProxy(server);
    server.on('connection', (client) => {
      proxy.connections += 1;
      const upstream = netConnect(targetPort, '127.0.0.1');
      for (const s of [client, upstream]) {
        proxy.#sockets.add(s);
        s.on('close', () => proxy.#sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.pipe(upstream);
      upstream.pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const addr = server.address();
    const port = typeof addr === 'object' && addr ? addr.port : 0;
    return Object.assign(proxy, { port });
  }

  cut(): void {
    for (const s of this.#sockets) s.destroy();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((r) => this.#server.close(() => r()));
  }
}
