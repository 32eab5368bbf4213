/**
 * How the scheduler, the workers and the farms reach nats-server: the server URLs plus one way of
 * authenticating (user and password, a token, an nkey seed file or a `.creds` file) and TLS (a CA
 * to verify the server, a client certificate and key for mutual TLS). Both services take the same
 * flags and `KILN_NATS_*` environment ({@link NATS_AUTH_FLAGS}, {@link natsAuthFrom}), compile
 * them once, and connect through {@link connectNats}, which turns a refused connection into one
 * typed, one-line error instead of a stack trace.
 */
import { readFileSync } from 'node:fs';
import { KilnError } from '@kiln/protocol';
import type { Authenticator, NatsConnection, NodeConnectionOptions } from '@nats-io/transport-node';
import {
  connect,
  credsAuthenticator,
  nkeyAuthenticator,
  tokenAuthenticator,
  usernamePasswordAuthenticator,
} from '@nats-io/transport-node';

/** One way of authenticating to nats-server, and TLS. Every field optional: none is anonymous. */
export interface NatsAuth {
  user?: string;
  password?: string;
  token?: string;
  /** A file holding an nkey seed (`SU...`), as `nsc` or `nk -gen user` writes it. */
  nkeySeedFile?: string;
  /** A `.creds` file (a user JWT and its nkey seed, decentralized auth). */
  credsFile?: string;
  /** PEM CA bundle that signs the server's certificate (TLS is required when any TLS field is set). */
  tlsCa?: string;
  /** PEM client certificate and key (mutual TLS). */
  tlsCert?: string;
  tlsKey?: string;
  /**
   * Where the replies to this connection's requests go. A worker uses its own
   * ({@link workerInboxPrefix}), so that permissions can keep it from reading anyone else's.
   */
  inboxPrefix?: string;
}

export class NatsConfigError extends KilnError {
  constructor(message: string, key: string, cause?: unknown) {
    super('CONFIG_INVALID', message, { details: { key }, cause });
  }
}

/** nats-server refused the connection or was unreachable; the message is one line. */
export class NatsConnectError extends KilnError {
  constructor(code: 'BUS_AUTH' | 'BUS_UNREACHABLE' | 'BUS_TLS', message: string, cause?: unknown) {
    super(code, message, { cause, retryable: code === 'BUS_UNREACHABLE' });
  }
}

/** The flags both services accept (`node:util` parseArgs options). */
export const NATS_AUTH_FLAGS = {
  'nats-user': { type: 'string' },
  'nats-password': { type: 'string' },
  'nats-token': { type: 'string' },
  'nats-nkey': { type: 'string' },
  'nats-creds': { type: 'string' },
  'nats-tlscacert': { type: 'string' },
  'nats-tlscert': { type: 'string' },
  'nats-tlskey': { type: 'string' },
} as const;

/** `--help` lines for {@link NATS_AUTH_FLAGS}. */
export const NATS_AUTH_HELP = `  --nats-user U, --nats-password P   NATS user and password (KILN_NATS_USER, KILN_NATS_PASSWORD)
  --nats-token T           NATS token (KILN_NATS_TOKEN)
  --nats-nkey FILE         NATS nkey seed file (KILN_NATS_NKEY)
  --nats-creds FILE        NATS .creds file (KILN_NATS_CREDS)
  --nats-tlscacert FILE    CA of the NATS server's certificate (KILN_NATS_TLS_CA)
  --nats-tlscert FILE, --nats-tlskey FILE   client certificate for mutual TLS
                           (KILN_NATS_TLS_CERT, KILN_NATS_TLS_KEY)
`;

const ENV: Record<keyof typeof NATS_AUTH_FLAGS, string> = {
  'nats-user': 'KILN_NATS_USER',
  'nats-password': 'KILN_NATS_PASSWORD',
  'nats-token': 'KILN_NATS_TOKEN',
  'nats-nkey': 'KILN_NATS_NKEY',
  'nats-creds': 'KILN_NATS_CREDS',
  'nats-tlscacert': 'KILN_NATS_TLS_CA',
  'nats-tlscert': 'KILN_NATS_TLS_CERT',
  'nats-tlskey': 'KILN_NATS_TLS_KEY',
};

/**
 * The NATS auth of a service from its parsed flags and environment (flags win), unset fields
 * dropped; not checked yet ({@link checkNatsAuth}, once every layer is merged).
 */
export function natsAuthFrom(
  flags: Readonly<Record<string, unknown>>,
  env: Readonly<Record<string, string | undefined>>,
): NatsAuth {
  const get = (flag: keyof typeof NATS_AUTH_FLAGS): string | undefined => {
    const f = flags[flag];
    if (typeof f === 'string' && f !== '') return f;
    return env[ENV[flag]] || undefined;
  };
  return dropUnset({
    user: get('nats-user'),
    password: get('nats-password'),
    token: get('nats-token'),
    nkeySeedFile: get('nats-nkey'),
    credsFile: get('nats-creds'),
    tlsCa: get('nats-tlscacert'),
    tlsCert: get('nats-tlscert'),
    tlsKey: get('nats-tlskey'),
  });
}

function dropUnset(a: NatsAuth): NatsAuth {
  return Object.fromEntries(Object.entries(a).filter(([, v]) => v !== undefined && v !== ''));
}

/**
 * Drops unset fields and checks the combination: at most one way of authenticating, a password
 * only with a user, a client key only with its certificate. Throws {@link NatsConfigError}.
 */
export function checkNatsAuth(a: NatsAuth): NatsAuth {
  const out = dropUnset(a);
  const ways = [
    out.user !== undefined && 'user',
    out.token !== undefined && 'token',
    out.nkeySeedFile !== undefined && 'nkey',
    out.credsFile !== undefined && 'creds',
  ].filter(Boolean);
  if (ways.length > 1)
    throw new NatsConfigError(`NATS auth: give one of ${ways.join(', ')}, not several`, 'nats');
  if (out.password !== undefined && out.user === undefined)
    throw new NatsConfigError('NATS auth: a password needs a user (KILN_NATS_USER)', 'nats');
  if (out.user !== undefined && out.password === undefined)
    throw new NatsConfigError('NATS auth: a user needs a password (KILN_NATS_PASSWORD)', 'nats');
  if ((out.tlsCert === undefined) !== (out.tlsKey === undefined))
    throw new NatsConfigError('NATS TLS: a client certificate and its key go together', 'nats');
  return out;
}

function readSecretFile(path: string, what: string): Uint8Array {
  try {
    return new Uint8Array(readFileSync(path));
  } catch (cause) {
    throw new NatsConfigError(
      `cannot read the NATS ${what} ${path}: ${(cause as Error).message}`,
      'nats',
      cause,
    );
  }
}

/** The authenticator of `a`, or undefined (anonymous). Reads the nkey or creds file now. */
function authenticator(a: NatsAuth): Authenticator | undefined {
  if (a.user !== undefined) return usernamePasswordAuthenticator(a.user, a.password);
  if (a.token !== undefined) return tokenAuthenticator(a.token);
  if (a.nkeySeedFile !== undefined) {
    const seed = new TextDecoder().decode(readSecretFile(a.nkeySeedFile, 'nkey seed file')).trim();
    if (!seed.startsWith('SU'))
      throw new NatsConfigError(
        `the NATS nkey seed file ${a.nkeySeedFile} holds no user seed (SU...)`,
        'nats',
      );
    return nkeyAuthenticator(new TextEncoder().encode(seed));
  }
  if (a.credsFile !== undefined)
    return credsAuthenticator(readSecretFile(a.credsFile, 'creds file'));
  return undefined;
}

/** nats.js connection options for `servers` (comma-separated or a list) with `auth`. */
export function natsConnectionOptions(
  servers: string | readonly string[],
  auth: NatsAuth = {},
  extra: NodeConnectionOptions = {},
): NodeConnectionOptions {
  const list = typeof servers === 'string' ? servers.split(',').map((s) => s.trim()) : servers;
  const tls =
    auth.tlsCa || auth.tlsCert
      ? {
          ...(auth.tlsCa ? { caFile: auth.tlsCa } : {}),
          ...(auth.tlsCert ? { certFile: auth.tlsCert, keyFile: auth.tlsKey } : {}),
        }
      : undefined;
  const a = authenticator(auth);
  return {
    servers: [...list],
    ...(a ? { authenticator: a } : {}),
    ...(tls ? { tls } : {}),
    ...(auth.inboxPrefix ? { inboxPrefix: auth.inboxPrefix } : {}),
    ...extra,
  };
}

/**
 * Connects with `auth` (reconnecting forever once connected, unless `extra` says otherwise).
 * Rejects with {@link NatsConnectError} (`BUS_AUTH`: credentials refused; `BUS_TLS`; or
 * `BUS_UNREACHABLE`), or {@link NatsConfigError} for unreadable credential files.
 */
export async function connectNats(
  servers: string | readonly string[],
  auth: NatsAuth = {},
  extra: NodeConnectionOptions = {},
): Promise<NatsConnection> {
  const opts = natsConnectionOptions(
    servers,
    auth,
    // No stack captured per request: a measurable share of dispatch CPU (bench/README.md).
    { maxReconnectAttempts: -1, reconnectTimeWait: 250, noAsyncTraces: true, ...extra },
  );
  const where = opts.servers instanceof Array ? opts.servers.join(',') : String(opts.servers);
  try {
    return await connect(opts);
  } catch (err) {
    throw connectError(err, where, auth);
  }
}

function connectError(err: unknown, where: string, auth: NatsAuth): KilnError {
  const msg = (err instanceof Error ? err.message : String(err)).split('\n')[0] ?? '';
  const name = err instanceof Error ? err.name : '';
  const as =
    auth.user !== undefined
      ? `user ${auth.user}`
      : auth.token !== undefined
        ? 'a token'
        : auth.nkeySeedFile !== undefined
          ? `nkey ${auth.nkeySeedFile}`
          : auth.credsFile !== undefined
            ? `creds ${auth.credsFile}`
            : 'no credentials';
  if (name === 'AuthorizationError' || /authorization|authentication/i.test(msg))
    return new NatsConnectError(
      'BUS_AUTH',
      `nats-server at ${where} refused the credentials (${as}): ${msg}`,
      err,
    );
  if (/tls|certificate|ssl/i.test(msg))
    return new NatsConnectError('BUS_TLS', `TLS to nats-server at ${where} failed: ${msg}`, err);
  return new NatsConnectError(
    'BUS_UNREACHABLE',
    `cannot reach nats-server at ${where}: ${msg}`,
    err,
  );
}
