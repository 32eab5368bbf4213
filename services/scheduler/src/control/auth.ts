/**
 * Who calls the control API: every call is authenticated into a {@link Caller} (its tenant and
 * the entitlements the farm allows it) before anything else runs.
 *
 * Contract:
 * - Bearer tokens (`authorization: Bearer <token>` metadata) map to tenants. Tokens are kept only
 *   as sha256 digests and compared in constant time against every known one (no early exit).
 * - With mutual TLS, a verified client certificate's subject CN names the tenant of a call that
 *   sends no token (a token, when sent, wins).
 * - When neither tokens nor client certificates are configured, authentication is off: every
 *   caller is the {@link LOCAL_TENANT} (the scheduler then listens on loopback or a unix socket
 *   only, unless `--insecure-listen`: config.ts).
 * - When it is on, a call without a valid token or certificate fails `UNAUTHENTICATED`; a wrong
 *   token never says which tenants exist.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { PeerCertificate } from 'node:tls';
import type * as grpc from '@grpc/grpc-js';
import { KilnError, registerErrorClass } from '@kiln/protocol';
import { isEntitlement } from '@kiln/llb';
import type { Entitlement } from '@kiln/llb';

/** The tenant of an unauthenticated caller on a farm without authentication. */
export const LOCAL_TENANT = 'local';

const TENANT_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
/** RFC 6750's token68 characters: a token never holds a separator of the tokens file. */
const TOKEN_RE = /^[A-Za-z0-9._~+/=-]{16,512}$/;

export interface TenantToken {
  tenant: string;
  token: string;
  /** Entitlements this tenant may use on top of the farm's (`--allow-insecure-entitlement`). */
  allow?: readonly Entitlement[];
}

export interface Caller {
  tenant: string;
  /** Entitlements the farm allows this caller. */
  allowed: ReadonlySet<Entitlement>;
  /**
   * May see and prune the workers' caches, which hold every tenant's results (DiskUsage, Prune):
   * the farm's `--admin-tenant`s, or the one caller of a farm without authentication.
   */
  admin: boolean;
}

export class UnauthenticatedError extends KilnError {
  constructor(message: string) {
    super('UNAUTHENTICATED', message);
  }
}
registerErrorClass('UNAUTHENTICATED', (m) => new UnauthenticatedError(m));

/** An authenticated caller asked for what its tenant may not do. */
export class PermissionDeniedError extends KilnError {
  constructor(message: string) {
    super('PERMISSION_DENIED', message);
  }
}
registerErrorClass('PERMISSION_DENIED', (m) => new PermissionDeniedError(m));

/** DiskUsage and Prune show and remove every tenant's cached results: admins only. */
export function requireAdmin(caller: Caller, what: string): Caller {
  if (!caller.admin)
    throw new PermissionDeniedError(
      `${what} covers every tenant's cache: tenant ${caller.tenant} is not an admin of this farm (scheduler --admin-tenant)`,
    );
  return caller;
}

export class TokensInvalidError extends KilnError {
  constructor(message: string, source: string) {
    super('CONFIG_INVALID', `${source}: ${message}`, { details: { key: 'tokens' } });
  }
}

/**
 * Parses tokens: JSON (`[{"tenant": "a", "token": "...", "allow": ["network.host"]}]`) or
 * entries `tenant:token [entitlement ...]` separated by newlines or commas (blank lines and `#`
 * comments ignored; `KILN_TOKENS=a:tok1,b:tok2` works). Tokens: 16 to 512 token68 characters.
 */
export function parseTokens(text: string, source: string): TenantToken[] {
  const trimmed = text.trim();
  let raw: { tenant?: unknown; token?: unknown; allow?: unknown }[];
  if (trimmed.startsWith('[')) {
    try {
      raw = JSON.parse(trimmed) as typeof raw;
    } catch (cause) {
      throw new TokensInvalidError(`not valid JSON: ${(cause as Error).message}`, source);
    }
    if (!Array.isArray(raw)) throw new TokensInvalidError('want a JSON array', source);
  } else {
    raw = trimmed
      .split(/[\n,]/)
      .map((l) => l.trim())
      .filter((l) => l !== '' && !l.startsWith('#'))
      .map((entry) => {
        const [pair = '', ...allow] = entry.split(/\s+/);
        const i = pair.indexOf(':');
        return i < 0
          ? { tenant: pair }
          : { tenant: pair.slice(0, i), token: pair.slice(i + 1), allow };
      });
  }
  const seen = new Set<string>();
  return raw.map((r, i) => {
    const where = `entry ${i + 1}`;
    if (typeof r.tenant !== 'string' || !TENANT_RE.test(r.tenant))
      throw new TokensInvalidError(`${where}: tenant must match ${TENANT_RE.source}`, source);
    if (typeof r.token !== 'string' || !TOKEN_RE.test(r.token))
      throw new TokensInvalidError(
        `${where} (tenant ${r.tenant}): a token is 16 to 512 characters of A-Z a-z 0-9 . _ ~ + / = -`,
        source,
      );
    if (seen.has(r.token)) throw new TokensInvalidError(`${where}: a token is given twice`, source);
    seen.add(r.token);
    const allow = r.allow ?? [];
    if (!Array.isArray(allow) || !allow.every((a) => typeof a === 'string' && isEntitlement(a)))
      throw new TokensInvalidError(
        `${where} (tenant ${r.tenant}): allow takes security.insecure, network.host`,
        source,
      );
    return { tenant: r.tenant, token: r.token, allow: allow };
  });
}

interface Known {
  tenant: string;
  hash: Buffer;
  allow: readonly Entitlement[];
}

const sha256 = (s: string): Buffer => createHash('sha256').update(s).digest();

export interface AuthenticatorOptions {
  tokens?: readonly TenantToken[];
  /** Mutual TLS is on: a verified client certificate's CN names the tenant. */
  clientCertificates?: boolean;
  /** Entitlements every caller may use (`--allow-insecure-entitlement`). */
  allow?: readonly Entitlement[];
  /** Tenants that may see and prune the farm's caches (`--admin-tenant`). */
  admins?: readonly string[];
  /**
   * Callers must authenticate even with no token yet (a tokens file that is empty now). Default:
   * when tokens or client certificates are given. Reloaded tokens never turn it off.
   */
  required?: boolean;
}

export class Authenticator {
  #known: Known[] = [];
  readonly #certs: boolean;
  readonly #allow: readonly Entitlement[];
  readonly #admins: ReadonlySet<string>;
  readonly #required: boolean;

  constructor(o: AuthenticatorOptions = {}) {
    this.#certs = o.clientCertificates ?? false;
    this.#allow = o.allow ?? [];
    this.#admins = new Set(o.admins ?? []);
    this.setTokens(o.tokens ?? []);
    this.#required = o.required ?? (this.#certs || this.#known.length > 0);
  }

  /** Whether callers must authenticate (tokens or client certificates are configured). */
  get required(): boolean {
    return this.#required;
  }

  /** Replaces the tokens (a reloaded tokens file); calls already authenticated keep their tenant. */
  setTokens(tokens: readonly TenantToken[]): void {
    this.#known = tokens.map((t) => ({
      tenant: t.tenant,
      hash: sha256(t.token),
      allow: t.allow ?? [],
    }));
  }

  authenticate(call: {
    metadata: grpc.Metadata;
    getAuthContext?: () => { sslPeerCertificate?: PeerCertificate | undefined } | null;
  }): Caller {
    const caller = (tenant: string, extra: readonly Entitlement[] = []): Caller => ({
      tenant,
      allowed: new Set([...this.#allow, ...extra]),
      admin: !this.required || this.#admins.has(tenant),
    });
    const header = call.metadata.get('authorization')[0];
    const token =
      typeof header === 'string' && /^bearer /i.test(header) ? header.slice(7).trim() : undefined;
    if (!this.required) return caller(LOCAL_TENANT);
    if (token !== undefined) {
      const h = sha256(token);
      let match: Known | undefined;
      // Every entry is compared: the time taken does not say which one matched.
      for (const k of this.#known) if (timingSafeEqual(h, k.hash) && !match) match = k;
      if (!match) throw new UnauthenticatedError('the token is not valid for this farm');
      return caller(match.tenant, match.allow);
    }
    if (header !== undefined)
      throw new UnauthenticatedError('the authorization header must be "Bearer <token>"');
    if (this.#certs) {
      const cn = call.getAuthContext?.()?.sslPeerCertificate?.subject?.CN;
      const name: unknown = Array.isArray(cn) ? cn[0] : cn;
      if (typeof name === 'string' && TENANT_RE.test(name)) return caller(name);
      if (name !== undefined)
        throw new UnauthenticatedError(
          `the client certificate's CN must name a tenant (${TENANT_RE.source})`,
        );
    }
    throw new UnauthenticatedError(
      'this farm needs authentication: pass a token (--token, KILN_TOKEN) or a client certificate',
    );
  }
}
