/**
 * Listening on an address, with one clear, typed error when it cannot be done (a port in use, an
 * address not on this machine, no permission) instead of the raw errors of node:net or grpc-js.
 */
import type { Server } from 'node:http';
import { KilnError } from '@kiln/protocol';

/** A service could not listen on `addr`: the message says why in words (`EADDRINUSE`...). */
export class ListenFailedError extends KilnError {
  constructor(what: string, addr: string, cause: unknown) {
    super('LISTEN_FAILED', `${what} cannot listen on ${addr}: ${reason(cause)}`, {
      cause,
      details: { addr },
    });
  }
}

const REASONS: Record<string, string> = {
  EADDRINUSE: 'address already in use (another process has this port)',
  EADDRNOTAVAIL: 'address not available on this machine',
  EACCES: 'permission denied (ports under 1024 need privileges)',
};

/** The errno code found in an error's text or fields, as words. */
function reason(cause: unknown): string {
  const text =
    cause instanceof Error
      ? `${(cause as { code?: string }).code ?? ''} ${cause.message}`
      : String(cause);
  for (const [code, words] of Object.entries(REASONS)) if (text.includes(code)) return words;
  return cause instanceof Error ? cause.message : String(cause);
}

/** `host:port` (port 0 for a free one) into its parts; IPv6 hosts in brackets. */
export function splitHostPort(addr: string): { host: string; port: number } {
  const m = /^\[?([^\]]*)\]?:(\d+)$/.exec(addr);
  if (!m) throw new ListenFailedError('listener', addr, new Error('expected host:port'));
  return { host: m[1]!, port: Number(m[2]) };
}

/** Listens `server` on `addr` (`host:port`); resolves with the bound port. */
export async function listenHttp(what: string, server: Server, addr: string): Promise<number> {
  const { host, port } = splitHostPort(addr);
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => reject(new ListenFailedError(what, addr, err));
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
  const a = server.address();
  return typeof a === 'object' && a ? a.port : port;
}
