import { Readable } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import { KilnError } from '@kiln/protocol';
import type { Authorizer } from './auth.js';
import {
  ImageNotFoundError,
  RegistryAuthError,
  RegistryRequestError,
  RegistryUnavailableError,
} from './errors.js';

export type RequestBody = Buffer | (() => Readable | Promise<Readable>);

export interface RegistryRequest {
  /** The registry host as written in references: the key for credentials and challenges. */
  host: string;
  method: 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  url: URL;
  /** Token scopes the request needs (`repository:<name>:pull[,push]`). */
  scopes: readonly string[];
  headers?: Record<string, string>;
  /** A buffer, or a function opening the body afresh for each attempt. */
  body?: RequestBody;
  /** Names the thing requested in errors (`127.0.0.1:5000/busybox:latest`). */
  what: string;
  /** Non-2xx statuses returned as they are instead of becoming errors (e.g. 404 for an existence check). */
  passStatuses?: readonly number[];
}

export interface TransportOptions {
  authorizer: Authorizer;
  /** Attempts for connection failures, 5xx and 429 (default 4). */
  maxAttempts: number;
  /** First backoff; doubled per attempt, with jitter (default 200 ms). */
  retryBaseDelayMs: number;
  userAgent: string;
}

const MAX_REDIRECTS = 5;
const MAX_AUTH_ROUNDS = 3;

/** A Node fetch failure below HTTP (refused, reset, DNS, TLS): fetch rejects with a TypeError. */
function isNetworkError(err: unknown): boolean {
  return (
    err instanceof TypeError ||
    (err instanceof Error && 'code' in err && typeof err.code === 'string')
  );
}

function kilnCause(err: unknown): KilnError | undefined {
  for (let e = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    if (e instanceof KilnError) return e;
  }
  return undefined;
}

function describe(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const cause = err.cause instanceof Error ? `: ${err.cause.message}` : '';
  return `${err.message}${cause}`;
}

/** `errors[].code` and messages from a distribution error body, for error messages. */
async function errorSummary(res: Response): Promise<{ codes: string[]; text: string }> {
  let text = '';
  try {
    text = await res.text();
  } catch {
    return { codes: [], text: '' };
  }
  try {
    const doc = JSON.parse(text) as { errors?: { code?: string; message?: string }[] };
    const errs = doc.errors ?? [];
    return {
      codes: errs.map((e) => e.code ?? '').filter((c) => c !== ''),
      text: errs.map((e) => `${e.code ?? ''}: ${e.message ?? ''}`).join('; '),
    };
  } catch {
    return { codes: [], text: text.slice(0, 300) };
  }
}

/**
 * A plain GET with the same bounded retries as registry requests (connection failures, 5xx, 429),
 * for token servers. The last 5xx answer is returned as it is; a connection that never succeeds
 * is a {@link RegistryUnavailableError}.
 */
export async function getWithRetries(
  url: URL,
  headers: Record<string, string>,
  opts: { maxAttempts: number; retryBaseDelayMs: number; what: string },
): Promise<Response> {
  let lastErr: Error | undefined;
  for (let attempt = 1; attempt <= opts.maxAttempts; attempt++) {
    if (attempt > 1) {
      const base = opts.retryBaseDelayMs * 2 ** (attempt - 2);
      await delay(base / 2 + Math.random() * base);
    }
    let res: Response;
    try {
      res = await fetch(url, { headers });
    } catch (err) {
      if (!isNetworkError(err)) throw err;
      lastErr = new RegistryUnavailableError(`${opts.what}: GET ${url.origin}: ${describe(err)}`, {
        cause: err,
      });
      continue;
    }
    if ((res.status === 429 || res.status >= 500) && attempt < opts.maxAttempts) {
      await res.body?.cancel();
      continue;
    }
    return res;
  }
  throw lastErr ?? new RegistryUnavailableError(`${opts.what}: no attempt made`);
}

/**
 * Sends registry requests: bearer/basic auth through the {@link Authorizer} (a 401 is answered
 * once with credentials), redirects followed by hand so that credentials never leave the
 * registry's origin, and bounded retries with exponential backoff for connection failures, 5xx
 * and 429. Responses are returned with their body unread; callers must consume or cancel it.
 */
export class Transport {
  constructor(private readonly opts: TransportOptions) {}

  async send(req: RegistryRequest): Promise<Response> {
    let lastErr: Error | undefined;
    for (let attempt = 1; attempt <= this.opts.maxAttempts; attempt++) {
      if (attempt > 1) {
        const base = this.opts.retryBaseDelayMs * 2 ** (attempt - 2);
        await delay(base / 2 + Math.random() * base);
      }
      let res: Response;
      try {
        res = await this.sendAuthorized(req);
      } catch (err) {
        // A request body that failed its own check (a digest mismatch on upload) surfaces as a
        // fetch TypeError whose cause is our error: that is not a network failure, do not retry.
        const own = kilnCause(err);
        if (own !== undefined) throw own;
        if (!isNetworkError(err)) throw err;
        lastErr = new RegistryUnavailableError(
          `${req.what}: ${req.method} ${req.url.origin}: ${describe(err)}`,
          { cause: err },
        );
        continue;
      }
      if (res.status === 429 || res.status >= 500) {
        const summary = await errorSummary(res);
        lastErr = new RegistryUnavailableError(
          `${req.what}: ${req.method} ${req.url.origin} answered HTTP ${res.status}${summary.text ? `: ${summary.text}` : ''}`,
          { details: { status: res.status } },
        );
        continue;
      }
      return this.check(req, res);
    }
    throw lastErr ?? new RegistryUnavailableError(`${req.what}: no attempt made`);
  }

  private async check(req: RegistryRequest, res: Response): Promise<Response> {
    if (res.ok || (res.status >= 300 && res.status < 400) || req.passStatuses?.includes(res.status))
      return res;
    const summary = await errorSummary(res);
    const suffix = summary.text ? `: ${summary.text}` : '';
    if (res.status === 401 || res.status === 403) {
      throw new RegistryAuthError(
        req.host,
        `${req.what}: access denied by ${req.host} (HTTP ${res.status})${suffix}`,
        {
          details: { status: res.status },
        },
      );
    }
    if (res.status === 404)
      throw new ImageNotFoundError(req.what, `${req.what}: not found${suffix}`);
    throw new RegistryRequestError(
      res.status,
      `${req.what}: ${req.method} answered HTTP ${res.status}${suffix}`,
      {
        details: { codes: summary.codes.join(',') },
      },
    );
  }

  /** One attempt: auth rounds and redirects. */
  private async sendAuthorized(req: RegistryRequest): Promise<Response> {
    for (let round = 1; ; round++) {
      const authorization = await this.opts.authorizer.authorization(req.host, req.scopes);
      const res = await this.sendFollowing(req, authorization);
      if (res.status !== 401 || round >= MAX_AUTH_ROUNDS) return res;
      const retry = this.opts.authorizer.handleUnauthorized(
        req.host,
        res,
        req.scopes,
        authorization,
      );
      if (!retry) return res;
      await res.body?.cancel();
    }
  }

  private async sendFollowing(
    req: RegistryRequest,
    authorization: string | undefined,
  ): Promise<Response> {
    let url = req.url;
    let method = req.method;
    for (let hop = 0; ; hop++) {
      const headers: Record<string, string> = { 'user-agent': this.opts.userAgent, ...req.headers };
      // Credentials go to the registry's own origin only, never to a redirect target (blob CDNs).
      if (authorization !== undefined && url.origin === req.url.origin)
        headers.authorization = authorization;
      const init: RequestInit & { duplex?: 'half' } = { method, headers, redirect: 'manual' };
      if (req.body !== undefined && method !== 'GET' && method !== 'HEAD') {
        if (Buffer.isBuffer(req.body)) {
          init.body = req.body;
        } else {
          init.body = Readable.toWeb(await req.body()) as ReadableStream<Uint8Array>;
          init.duplex = 'half';
        }
      }
      const res = await fetch(url, init);
      const location = res.headers.get('location');
      if (res.status < 300 || res.status >= 400 || res.status === 304 || location === null)
        return res;
      // Upload endpoints answer 201/202 with Location: those are not redirects and returned above.
      if (hop >= MAX_REDIRECTS) return res;
      await res.body?.cancel();
      url = new URL(location, url);
      if (res.status === 303) method = 'GET';
    }
  }
}
