import { readFileSync } from 'node:fs';
import type { HostEntry, NetworkMode } from './types.js';

/** BuildKit's default hostname inside build containers. */
export const DEFAULT_HOSTNAME = 'buildkitsandbox';
/** BuildKit's (and Docker's) default PATH when the image sets none. */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const DEFAULT_NAMESERVERS = ['8.8.8.8', '8.8.4.4', '2001:4860:4860::8888', '2001:4860:4860::8844'];

/** `/etc/hosts` as BuildKit writes it: localhost with the hostname, then the extra hosts. */
export function hostsFile(hostname: string, extra: readonly HostEntry[] = []): string {
  let out = `127.0.0.1\tlocalhost ${hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n`;
  for (const h of extra) out += `${h.ip}\t${h.host}\n`;
  return out;
}

/**
 * `/etc/resolv.conf` from the host's: as is with host networking; otherwise without loopback
 * nameservers (unreachable from another network namespace), falling back to public resolvers
 * when none remain, as Docker and BuildKit do.
 */
export function resolvConf(network: NetworkMode, hostPath = '/etc/resolv.conf'): string {
  let text = '';
  try {
    // A small file the kernel has cached: read in one call (at every RUN, on its critical path).
    text = readFileSync(hostPath, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (network === 'host') return text;
  const kept = text.split('\n').filter((l) => !/^\s*nameserver\s+(127\.|::1\b|0\.0\.0\.0)/.test(l));
  if (!kept.some((l) => /^\s*nameserver\s/.test(l))) {
    for (const ns of DEFAULT_NAMESERVERS) kept.push(`nameserver ${ns}`);
  }
  return `${kept.filter((l, i, a) => l !== '' || i < a.length - 1).join('\n')}\n`;
}
