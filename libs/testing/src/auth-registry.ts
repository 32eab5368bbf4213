/**
 * Registry auth and faults for the registry client's users: docker-registry with auth
 * ({@link startAuthRegistry}), a small token server that signs real JWTs for the registry's
 * `auth.token` backend, and a fault-injecting HTTP proxy in front of a real registry.
 */
import { execFile } from 'node:child_process';
import { X509Certificate, createPrivateKey, randomUUID, sign } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, request as httpRequest } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startRegistry } from './registry.js';
import type { RegistryAuthConfig, RegistryHandle } from './registry.js';
import { makeTempDir } from './util.js';

const execFileAsync = promisify(execFile);

/** Starts docker-registry with `auth` on a free loopback port (ready when /v2/ answers 401). */
export function startAuthRegistry(auth: RegistryAuthConfig): Promise<RegistryHandle> {
  return startRegistry({ auth });
}

export interface TokenServerOptions {
  service: string;
  issuer: string;
  users: Record<string, string>;
  /** Grant anonymous `pull` (default false: anonymous requests get 401). */
  anonymousPull?: boolean;
}

export interface TokenRequestLog {
  account: string | undefined;
  authenticated: boolean;
  scopes: string[];
}

export interface TokenServer {
  realm: string;
  /** PEM of the signing certificate: the registry's rootcertbundle. */
  certPath: string;
  requests: TokenRequestLog[];
  stop: () => Promise<void>;
}

function b64url(b: Buffer | string): string {
  return Buffer.from(b).toString('base64url');
}

/**
 * A token server for the registry's `auth.token` backend (docker's token auth spec): checks Basic
 * credentials against `users`, grants the scopes asked for (anonymous: `pull` only, when allowed),
 * and signs RS256 JWTs whose `x5c` header carries a self-signed certificate made by `openssl`.
 */
export async function startTokenServer(opts: TokenServerOptions): Promise<TokenServer> {
  const tmp = makeTempDir('token');
  const keyPath = join(tmp.dir, 'key.pem');
  const certPath = join(tmp.dir, 'cert.pem');
  await execFileAsync('openssl', [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    keyPath,
    '-out',
    certPath,
    '-subj',
    '/CN=kiln-test-token-issuer',
    '-days',
    '2',
  ]);
  const key = createPrivateKey(await readFile(keyPath));
  const certDer = new X509Certificate(await readFile(certPath)).raw.toString('base64');
  const requests: TokenRequestLog[] = [];

  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    const url = new URL(req.url ?? '/', 'http://token');
    const scopes = url.searchParams.getAll('scope');
    let user: string | undefined;
    const authz = req.headers.authorization;
    if (authz?.startsWith('Basic ')) {
      const decoded = Buffer.from(authz.slice(6), 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      const name = decoded.slice(0, colon);
      if (colon > 0 && opts.users[name] === decoded.slice(colon + 1)) user = name;
      else {
        requests.push({
          account: url.searchParams.get('account') ?? undefined,
          authenticated: false,
          scopes,
        });
        res
          .writeHead(401, { 'content-type': 'application/json' })
          .end('{"details":"bad credentials"}');
        return;
      }
    }
    requests.push({
      account: url.searchParams.get('account') ?? undefined,
      authenticated: user !== undefined,
      scopes,
    });
    if (user === undefined && !opts.anonymousPull) {
      res
        .writeHead(401, { 'content-type': 'application/json' })
        .end('{"details":"authentication required"}');
      return;
    }
    const access = scopes.flatMap((s) => {
      const [type, name, actions] = s.split(':');
      if (type !== 'repository' || name === undefined || actions === undefined) return [];
      const granted = actions.split(',').filter((a) => user !== undefined || a === 'pull');
      return [{ type, name, actions: granted }];
    });
    const now = Math.floor(Date.now() / 1000);
    const header = { typ: 'JWT', alg: 'RS256', x5c: [certDer] };
    const claims = {
      iss: opts.issuer,
      sub: user ?? '',
      aud: opts.service,
      exp: now + 300,
      nbf: now - 10,
      iat: now,
      jti: randomUUID(),
      access,
    };
    const signingInput = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    const sig = sign('sha256', Buffer.from(signingInput), key);
    const token = `${signingInput}.${b64url(sig)}`;
    res
      .writeHead(200, { 'content-type': 'application/json' })
      .end(JSON.stringify({ token, expires_in: 300 }));
  };
  const server = createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const addr = server.address();
  if (addr === null || typeof addr === 'string') throw new Error('token server: no address');
  return {
    realm: `http://127.0.0.1:${addr.port}/token`,
    certPath,
    requests,
    stop: async () => {
      await closeServer(server);
      tmp.remove();
    },
  };
}

async function closeServer(server: Server): Promise<void> {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

/** What the proxy does with one request. */
export type Fault =
  | { kind: 'status'; status: number }
  /** Destroys the client connection without an answer (a connection reset). */
  | { kind: 'reset' }
  /** Forwards, but flips one byte of the response body. */
  | { kind: 'corrupt' }
  /** Forwards, but answers with `body` instead (headers kept, length fixed). */
  | { kind: 'replace'; body: Buffer }
  /** Forwards the headers and half the body, then drops the connection (a download broken off). */
  | { kind: 'truncate' }
  /** Answers `307 Temporary Redirect` to `location` (a blob CDN, say). */
  | { kind: 'redirect'; location: string }
  /** Forwards once `until` resolves (a request held in flight). */
  | { kind: 'hold'; until: Promise<void> };

export interface FaultProxy {
  /** 127.0.0.1:PORT: use it as the registry host in references. */
  addr: string;
  /** Every request seen, in order: `METHOD /path`. */
  log: string[];
  /** The Authorization header of each request in `log` (same order), if it had one. */
  authorizations: (string | undefined)[];
  stop: () => Promise<void>;
}

/**
 * A fault-injecting HTTP proxy in front of a real registry (not a registry mock): every request is
 * forwarded to `target` unchanged (Host included, so upload Locations point back at the proxy)
 * unless `fault` returns something for it.
 */
export async function startFaultProxy(
  target: string,
  fault: (method: string, path: string) => Fault | undefined = () => undefined,
): Promise<FaultProxy> {
  const [thost, tport] = target.split(':');
  const log: string[] = [];
  const authorizations: (string | undefined)[] = [];
  const server = createServer((req, res) => {
    const method = req.method ?? 'GET';
    const path = req.url ?? '/';
    log.push(`${method} ${path.split('?')[0]}`);
    authorizations.push(req.headers.authorization);
    const f = fault(method, path);
    if (f?.kind === 'redirect') {
      req.resume();
      res.writeHead(307, { location: f.location }).end();
      return;
    }
    if (f?.kind === 'reset') {
      req.socket.destroy();
      return;
    }
    if (f?.kind === 'status') {
      req.resume();
      res
        .writeHead(f.status, { 'content-type': 'application/json' })
        .end('{"errors":[{"code":"UNAVAILABLE","message":"injected"}]}');
      return;
    }
    if (f?.kind === 'hold') {
      req.pause();
      void f.until.then(() => forward(undefined));
      return;
    }
    forward(f);
    function forward(f: Exclude<Fault, { kind: 'hold' | 'redirect' }> | undefined): void {
      const up = httpRequest(
        { host: thost, port: Number(tport), method, path, headers: req.headers },
        (upRes) => {
          if (f === undefined) {
            res.writeHead(upRes.statusCode ?? 502, upRes.headers);
            upRes.pipe(res);
            return;
          }
          const chunks: Buffer[] = [];
          upRes.on('data', (c: Buffer) => chunks.push(c));
          upRes.on('end', () => {
            let body: Buffer = Buffer.concat(chunks);
            if (f.kind === 'truncate') {
              res.writeHead(upRes.statusCode ?? 502, upRes.headers);
              res.write(body.subarray(0, Math.floor(body.length / 2)), () => res.destroy());
              return;
            }
            if (f.kind === 'corrupt' && body.length > 0) {
              body = Buffer.from(body);
              const i = Math.floor(body.length / 2);
              body[i] = body[i]! ^ 0xff;
            } else if (f.kind === 'replace') {
              body = f.body;
            }
            res.writeHead(upRes.statusCode ?? 502, {
              ...upRes.headers,
              'content-length': String(body.length),
            });
            res.end(body);
          });
        },
      );
      up.on('error', () => res.destroy());
      req.pipe(up);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const addr = server.address();
  if (addr === null || typeof addr === 'string') throw new Error('proxy: no address');
  return { addr: `127.0.0.1:${addr.port}`, log, authorizations, stop: () => closeServer(server) };
}

/** A variable the harness's vitest global setup sets (`KILN_TEST_REGISTRY`...); throws when unset. */
export function harnessEnv(name: string): string {
  const v = process.env[name];
  if (!v)
    throw new Error(
      `${name} is not set: run through vitest from the repo root (the harness global setup sets it)`,
    );
  return v;
}
