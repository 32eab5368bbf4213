/**
 * The HTTP listener operators probe: `GET /healthz` (the process answers: 200), `GET /readyz`
 * (every readiness check passes: 200, else 503; the body is JSON naming each check) and, when a
 * metrics text source is given, `GET /metrics` (Prometheus text exposition).
 *
 * Contract: checks are cheap and synchronous or short promises (a probe has a deadline); a check
 * that throws counts as failed. Anything else answers 404; methods other than GET/HEAD 405. The
 * listener is opt-in (`--health-listen` / `--metrics-listen`) and serves plain HTTP: bind it to
 * an address only the probes reach.
 */
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import { listenHttp } from './listen.js';

export type ReadinessCheck = () => boolean | Promise<boolean>;

export interface OpsServerOptions {
  /** Named readiness checks; `/readyz` is 200 only when all pass. */
  readonly checks?: Readonly<Record<string, ReadinessCheck>>;
  /** The `/metrics` body and its content type; absent: no `/metrics`. */
  readonly metrics?: () => Promise<{ contentType: string; body: string }>;
  /** Whether `/healthz` and `/readyz` answer (false: a metrics-only listener). */
  readonly health?: boolean;
}

export class OpsServer {
  readonly #server: Server;
  #port = 0;

  private constructor(o: OpsServerOptions) {
    this.#server = createServer((req, res) => {
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD' }).end();
        return;
      }
      const path = (req.url ?? '/').split('?')[0];
      const send = (code: number, type: string, body: string): void => {
        res.writeHead(code, { 'content-type': type, 'cache-control': 'no-store' });
        res.end(req.method === 'HEAD' ? undefined : body);
      };
      const health = o.health ?? true;
      if (health && path === '/healthz') send(200, 'text/plain', 'ok\n');
      else if (health && path === '/readyz')
        void readiness(o.checks ?? {}).then((r) =>
          send(r.ready ? 200 : 503, 'application/json', `${JSON.stringify(r)}\n`),
        );
      else if (o.metrics && path === '/metrics')
        o.metrics().then(
          (m) => send(200, m.contentType, m.body),
          (err: unknown) => send(500, 'text/plain', `metrics failed: ${String(err)}\n`),
        );
      else send(404, 'text/plain', 'not found\n');
    });
  }

  /** Serves on `addr` (`host:port`, port 0 for a free one); `ListenFailedError` if it cannot. */
  static async listen(what: string, addr: string, o: OpsServerOptions): Promise<OpsServer> {
    const s = new OpsServer(o);
    s.#port = await listenHttp(what, s.#server, addr);
    return s;
  }

  get port(): number {
    return this.#port;
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}

/** Runs every check; a throw or a rejection is a failure. */
async function readiness(
  checks: Readonly<Record<string, ReadinessCheck>>,
): Promise<{ ready: boolean; checks: Record<string, boolean> }> {
  const out: Record<string, boolean> = {};
  await Promise.all(
    Object.entries(checks).map(async ([name, check]) => {
      try {
        out[name] = await check();
      } catch {
        out[name] = false;
      }
    }),
  );
  return { ready: Object.values(out).every(Boolean), checks: out };
}
