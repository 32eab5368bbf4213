import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { RegistryAuthError } from './errors.js';

/** A username and password (or token) for one registry host. */
export interface RegistryCredentials {
  username: string;
  password: string;
}

/**
 * Looks up credentials for a registry host as written in image references (`docker.io`,
 * `ghcr.io`, `127.0.0.1:5000`); undefined means anonymous. May be called once per token fetch.
 */
export type CredentialsProvider = (
  host: string,
) => RegistryCredentials | undefined | Promise<RegistryCredentials | undefined>;

/** A parsed `WWW-Authenticate` challenge. */
export interface AuthChallenge {
  scheme: 'bearer' | 'basic';
  params: Record<string, string>;
}

/**
 * Parses `WWW-Authenticate` values (RFC 7235): one or more `Scheme k=v, k="quoted"` challenges.
 * Unknown schemes are dropped.
 */
export function parseChallenges(header: string | null): AuthChallenge[] {
  if (header === null) return [];
  const out: AuthChallenge[] = [];
  const schemeRe = /[ \t,]*([A-Za-z][\w-]*)[ \t]*/y;
  const paramRe = /([\w-]+)[ \t]*=[ \t]*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))[ \t]*,?[ \t]*/y;
  // A token68 credential (`Negotiate abc==`): only directly after the scheme, before a comma or the end.
  const token68Re = /[\w.~+/-]+=*[ \t]*(?:,|$)/y;
  let i = 0;
  while (i < header.length) {
    schemeRe.lastIndex = i;
    const m = schemeRe.exec(header);
    if (m === null) break;
    i = schemeRe.lastIndex;
    const scheme = m[1]!.toLowerCase();
    const params: Record<string, string> = {};
    token68Re.lastIndex = i;
    paramRe.lastIndex = i;
    if (!paramRe.test(header) && token68Re.test(header)) i = token68Re.lastIndex;
    for (;;) {
      paramRe.lastIndex = i;
      const p = paramRe.exec(header);
      if (p === null) break; // a bare word: the next challenge's scheme
      params[p[1]!.toLowerCase()] =
        p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : (p[3] ?? '');
      i = paramRe.lastIndex;
    }
    if (scheme === 'bearer' || scheme === 'basic') out.push({ scheme, params });
  }
  return out;
}

interface DockerConfigFile {
  auths?: Record<string, { auth?: string; username?: string; password?: string }>;
  /** The credential helper for every host (`desktop` runs `docker-credential-desktop`). */
  credsStore?: string;
  /** Per-host credential helpers; they win over `credsStore`. */
  credHelpers?: Record<string, string>;
}

/** What the docker CLI sends a credential helper for a host (Docker Hub has its legacy URL). */
function helperServer(host: string): string {
  return DOCKER_HUB_ALIASES.includes(host) ? 'https://index.docker.io/v1/' : host;
}

/**
 * Runs `docker-credential-<helper> get` with the server on stdin (the docker CLI's protocol) and
 * reads `{"Username", "Secret"}` from stdout. "credentials not found" means none; a helper that
 * is missing or fails otherwise is a {@link RegistryAuthError}. The secret is never logged.
 */
async function helperCredentials(
  helper: string,
  host: string,
): Promise<RegistryCredentials | undefined> {
  const cmd = `docker-credential-${helper}`;
  if (!/^[A-Za-z0-9._-]+$/.test(helper))
    throw new RegistryAuthError(host, `invalid credential helper name ${JSON.stringify(helper)}`);
  const { code, stdout, error } = await new Promise<{
    code: number | null;
    stdout: string;
    error?: Error;
  }>((resolve) => {
    const child = spawn(cmd, ['get'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.resume();
    child.on('error', (err) => resolve({ code: null, stdout: out, error: err }));
    child.on('close', (c) => resolve({ code: c, stdout: out }));
    child.stdin.on('error', () => undefined); // a helper that exits without reading stdin
    child.stdin.end(helperServer(host));
  });
  if (error !== undefined) {
    throw new RegistryAuthError(host, `running ${cmd}: ${error.message}`, { cause: error });
  }
  if (code !== 0) {
    if (/credentials not found/i.test(stdout)) return undefined;
    throw new RegistryAuthError(host, `${cmd} get exited with ${String(code)}`);
  }
  let doc: { Username?: unknown; Secret?: unknown };
  try {
    doc = JSON.parse(stdout) as typeof doc;
  } catch (err) {
    throw new RegistryAuthError(host, `${cmd} get did not print JSON`, { cause: err });
  }
  if (typeof doc.Username !== 'string' || typeof doc.Secret !== 'string' || doc.Secret === '')
    return undefined;
  return { username: doc.Username, password: doc.Secret };
}

/** The host part of a docker config `auths` key (`https://index.docker.io/v1/` -> `index.docker.io`). */
function configKeyHost(key: string): string {
  let k = key.trim();
  const scheme = /^[a-z]+:\/\//i.exec(k);
  if (scheme) k = k.slice(scheme[0].length);
  const slash = k.indexOf('/');
  return (slash >= 0 ? k.slice(0, slash) : k).toLowerCase();
}

const DOCKER_HUB_ALIASES = ['docker.io', 'index.docker.io', 'registry-1.docker.io'];

/**
 * Credentials from a Docker CLI config file (`~/.docker/config.json` by default): the `auths`
 * entries' base64 `auth` field (`user:password`) or `username`/`password`. Docker Hub's key
 * `https://index.docker.io/v1/` serves `docker.io`. As the docker CLI, a host's credential helper
 * (`credHelpers[host]`, else `credsStore`) is asked first (`docker-credential-<name> get`), the
 * `auths` entry when it knows nothing. A missing file means no credentials; a malformed one is a
 * {@link RegistryAuthError} when a host is looked up, naming the file.
 */
export function dockerConfigCredentials(
  path = join(homedir(), '.docker', 'config.json'),
): CredentialsProvider {
  let loaded: Map<string, RegistryCredentials> | undefined;
  let store: string | undefined;
  const helpers = new Map<string, string>();
  const load = (host: string): Map<string, RegistryCredentials> => {
    if (loaded !== undefined) return loaded;
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT')
        return (loaded = new Map<string, RegistryCredentials>());
      throw new RegistryAuthError(
        host,
        `reading docker config ${path}: ${(err as Error).message}`,
        { cause: err },
      );
    }
    let doc: DockerConfigFile;
    try {
      doc = JSON.parse(text) as DockerConfigFile;
    } catch (err) {
      throw new RegistryAuthError(host, `docker config ${path} is not valid JSON`, { cause: err });
    }
    const map = new Map<string, RegistryCredentials>();
    for (const [key, entry] of Object.entries(doc.auths ?? {})) {
      let creds: RegistryCredentials | undefined;
      if (typeof entry.auth === 'string' && entry.auth !== '') {
        const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
        const colon = decoded.indexOf(':');
        if (colon <= 0) {
          throw new RegistryAuthError(
            host,
            `docker config ${path}: auths[${JSON.stringify(key)}].auth is not base64 user:password`,
          );
        }
        creds = { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
      } else if (typeof entry.username === 'string' && typeof entry.password === 'string') {
        creds = { username: entry.username, password: entry.password };
      }
      if (creds !== undefined) map.set(configKeyHost(key), creds);
    }
    for (const [key, helper] of Object.entries(doc.credHelpers ?? {})) {
      if (typeof helper === 'string' && helper !== '') helpers.set(configKeyHost(key), helper);
    }
    if (typeof doc.credsStore === 'string' && doc.credsStore !== '') store = doc.credsStore;
    return (loaded = map);
  };
  const aliases = (h: string): string[] =>
    DOCKER_HUB_ALIASES.includes(h) ? DOCKER_HUB_ALIASES : [h];
  const fromAuths = (map: Map<string, RegistryCredentials>, h: string) => {
    for (const alias of aliases(h)) {
      const c = map.get(alias);
      if (c !== undefined) return c;
    }
    return undefined;
  };
  return (host: string) => {
    const map = load(host);
    const h = host.toLowerCase();
    const helper =
      aliases(h)
        .map((a) => helpers.get(a))
        .find((x) => x !== undefined) ?? store;
    if (helper === undefined) return fromAuths(map, h);
    return helperCredentials(helper, h).then((c) => c ?? fromAuths(map, h));
  };
}

/** Tries each provider in order; the first that knows the host wins. */
export function chainCredentials(...providers: CredentialsProvider[]): CredentialsProvider {
  return async (host) => {
    for (const p of providers) {
      const c = await p(host);
      if (c !== undefined) return c;
    }
    return undefined;
  };
}

export function basicAuthorization(c: RegistryCredentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`, 'utf8').toString('base64')}`;
}

interface CachedToken {
  header: string;
  expiresAt: number;
}

/** Tokens are refreshed this long before they expire. */
const EXPIRY_MARGIN_MS = 10_000;
/** Docker's default when a token response has no expires_in. */
const DEFAULT_TOKEN_LIFETIME_S = 60;

export interface AuthorizerOptions {
  credentials: CredentialsProvider;
  /** Makes the token request (the client's transport, so that retries and TLS rules apply). */
  fetchToken: (url: URL, headers: Record<string, string>) => Promise<Response>;
}

/**
 * Per-client authorization state, like containerd's docker authorizer: after a 401, the host's
 * challenge is remembered, so later requests to that host carry credentials up front; bearer
 * tokens are cached per (host, scopes) until shortly before they expire. Safe for concurrent use:
 * concurrent requests for the same token share one fetch.
 */
export class Authorizer {
  private readonly challenges = new Map<string, AuthChallenge>();
  private readonly tokens = new Map<string, Promise<CachedToken>>();

  constructor(private readonly opts: AuthorizerOptions) {}

  /** The Authorization header for a request to `host` needing `scopes`, if the host asked for auth before. */
  async authorization(host: string, scopes: readonly string[]): Promise<string | undefined> {
    const ch = this.challenges.get(host);
    if (ch === undefined) return undefined;
    if (ch.scheme === 'basic') {
      const c = await this.opts.credentials(host);
      if (c === undefined)
        throw new RegistryAuthError(
          host,
          `${host} requires basic auth and no credentials are configured`,
        );
      return basicAuthorization(c);
    }
    return (await this.token(host, ch, scopes)).header;
  }

  /**
   * Records the challenge of a 401 answer. Returns whether retrying with credentials can help
   * (false when the same kind of credentials was already sent and refused).
   */
  handleUnauthorized(
    host: string,
    res: Response,
    scopes: readonly string[],
    sent: string | undefined,
  ): boolean {
    const challenges = parseChallenges(res.headers.get('www-authenticate'));
    const ch =
      challenges.find((c) => c.scheme === 'bearer') ?? challenges.find((c) => c.scheme === 'basic');
    if (ch === undefined) return false;
    const prev = this.challenges.get(host);
    this.challenges.set(host, ch);
    if (sent === undefined) return true;
    if (ch.scheme === 'bearer') {
      // A cached token was refused (expired early, or a wider scope is needed now): fetch afresh once.
      const key = tokenKey(host, ch, scopes);
      const cached = this.tokens.get(key);
      this.tokens.delete(key);
      return (
        cached !== undefined || prev?.scheme !== 'bearer' || prev.params.realm !== ch.params.realm
      );
    }
    return prev?.scheme !== 'basic';
  }

  private token(host: string, ch: AuthChallenge, scopes: readonly string[]): Promise<CachedToken> {
    const key = tokenKey(host, ch, scopes);
    const cached = this.tokens.get(key);
    if (cached !== undefined) {
      return cached.then((t) =>
        t.expiresAt - EXPIRY_MARGIN_MS > Date.now() ? t : this.refresh(key, host, ch, scopes),
      );
    }
    return this.refresh(key, host, ch, scopes);
  }

  private refresh(
    key: string,
    host: string,
    ch: AuthChallenge,
    scopes: readonly string[],
  ): Promise<CachedToken> {
    const p = this.fetchBearer(host, ch, scopes);
    this.tokens.set(key, p);
    p.catch(() => {
      if (this.tokens.get(key) === p) this.tokens.delete(key);
    });
    return p;
  }

  /** GET <realm>?service=&scope=... with Basic credentials when there are any (Docker's token flow). */
  private async fetchBearer(
    host: string,
    ch: AuthChallenge,
    scopes: readonly string[],
  ): Promise<CachedToken> {
    const realm = ch.params.realm;
    if (realm === undefined || realm === '')
      throw new RegistryAuthError(host, `${host}: bearer challenge without realm`);
    let url: URL;
    try {
      url = new URL(realm);
    } catch (err) {
      throw new RegistryAuthError(host, `${host}: invalid token realm ${JSON.stringify(realm)}`, {
        cause: err,
      });
    }
    if (ch.params.service !== undefined) url.searchParams.set('service', ch.params.service);
    const wanted = new Set(scopes);
    if (ch.params.scope !== undefined)
      for (const s of ch.params.scope.split(' ')) if (s !== '') wanted.add(s);
    for (const s of [...wanted].sort()) url.searchParams.append('scope', s);
    const creds = await this.opts.credentials(host);
    const headers: Record<string, string> = {};
    if (creds !== undefined) {
      url.searchParams.set('account', creds.username);
      headers.authorization = basicAuthorization(creds);
    }
    const res = await this.opts.fetchToken(url, headers);
    const body = await res.text();
    if (res.status === 401 || res.status === 403) {
      throw new RegistryAuthError(
        host,
        `${host}: token server ${url.origin} refused ${creds === undefined ? 'anonymous access' : `the credentials of ${creds.username}`} (HTTP ${res.status})`,
        { details: { status: res.status } },
      );
    }
    if (!res.ok) {
      throw new RegistryAuthError(
        host,
        `${host}: token server ${url.origin} answered HTTP ${res.status}: ${body.slice(0, 200)}`,
        {
          details: { status: res.status },
        },
      );
    }
    let doc: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      doc = JSON.parse(body) as typeof doc;
    } catch (err) {
      throw new RegistryAuthError(host, `${host}: token response is not JSON`, { cause: err });
    }
    const token = typeof doc.token === 'string' && doc.token !== '' ? doc.token : doc.access_token;
    if (typeof token !== 'string' || token === '')
      throw new RegistryAuthError(host, `${host}: token response without a token`);
    const lifetime =
      typeof doc.expires_in === 'number' && doc.expires_in > 0
        ? doc.expires_in
        : DEFAULT_TOKEN_LIFETIME_S;
    return { header: `Bearer ${token}`, expiresAt: Date.now() + lifetime * 1000 };
  }
}

function tokenKey(host: string, ch: AuthChallenge, scopes: readonly string[]): string {
  return JSON.stringify([host, ch.params.realm, ch.params.service, [...scopes].sort()]);
}
