import { isIP } from 'node:net';

/** Docker Hub's API endpoint, which `docker.io` references resolve to (as in docker and containerd). */
export const DOCKER_HUB_ENDPOINT = 'registry-1.docker.io';

function splitHostPort(host: string): { hostname: string; port: string | undefined } {
  if (host.startsWith('[')) {
    const end = host.indexOf(']');
    const rest = host.slice(end + 1);
    return { hostname: host.slice(1, end), port: rest.startsWith(':') ? rest.slice(1) : undefined };
  }
  const colon = host.lastIndexOf(':');
  if (colon >= 0 && host.indexOf(':') === colon)
    return { hostname: host.slice(0, colon), port: host.slice(colon + 1) };
  return { hostname: host, port: undefined };
}

/** Whether `host` (with or without port) is a loopback address: localhost, 127.0.0.0/8 or ::1. */
export function isLoopbackHost(host: string): boolean {
  const { hostname } = splitHostPort(host.toLowerCase());
  if (hostname === 'localhost' || hostname.endsWith('.localhost')) return true;
  if (isIP(hostname) === 4) return hostname.startsWith('127.');
  if (isIP(hostname) === 6) return hostname === '::1' || hostname === '0:0:0:0:0:0:0:1';
  return false;
}

/**
 * The base URL of a registry's API for a reference host. Plain HTTP for loopback hosts (docker
 * treats 127.0.0.0/8 as insecure; containerd's `MatchLocalhost`) and for hosts listed as insecure
 * (exact `host[:port]` or bare hostname matching any port); HTTPS otherwise.
 */
export function registryBaseUrl(host: string, insecure: ReadonlySet<string>): URL {
  const h = host.toLowerCase();
  const endpoint = h === 'docker.io' || h === 'index.docker.io' ? DOCKER_HUB_ENDPOINT : h;
  const plain =
    isLoopbackHost(endpoint) ||
    insecure.has(endpoint) ||
    insecure.has(splitHostPort(endpoint).hostname);
  return new URL(`${plain ? 'http' : 'https'}://${endpoint}`);
}
