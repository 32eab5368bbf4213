/** The platforms a worker runs: native from the CPU, emulated through a registered qemu binfmt. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { WorkerPlatform } from '@kiln/bus';
import { formatPlatform, parsePlatform, platformMatches } from '@kiln/protocol';
import type { Platform } from '@kiln/protocol';
import { WorkerConfigError } from './errors.js';

/** Node's `process.arch` -> OCI architecture (and variant). */
const NODE_ARCH: Record<string, Platform> = {
  x64: { os: 'linux', architecture: 'amd64' },
  arm64: { os: 'linux', architecture: 'arm64' },
  arm: { os: 'linux', architecture: 'arm', variant: 'v7' },
  ia32: { os: 'linux', architecture: '386' },
  ppc64: { os: 'linux', architecture: 'ppc64le' },
  s390x: { os: 'linux', architecture: 's390x' },
  riscv64: { os: 'linux', architecture: 'riscv64' },
};

/** OCI architecture -> the qemu binfmt handler name (`/proc/sys/fs/binfmt_misc/qemu-<name>`). */
const QEMU_ARCH: Record<string, string> = {
  amd64: 'x86_64',
  arm64: 'aarch64',
  arm: 'arm',
  '386': 'i386',
  ppc64le: 'ppc64le',
  s390x: 's390x',
  riscv64: 'riscv64',
};

export const BINFMT_DIR = '/proc/sys/fs/binfmt_misc';

export function nativePlatform(arch: string = process.arch): Platform {
  const p = NODE_ARCH[arch];
  if (!p) throw new WorkerConfigError(`no OCI platform known for CPU architecture ${arch}`);
  return p;
}

/** Whether a qemu handler for `p` is registered and enabled in binfmt_misc. */
export function binfmtRegistered(p: Platform, binfmtDir: string = BINFMT_DIR): boolean {
  const name = QEMU_ARCH[p.architecture];
  if (!name) return false;
  try {
    return readFileSync(join(binfmtDir, `qemu-${name}`), 'utf8').split('\n')[0] === 'enabled';
  } catch {
    return false;
  }
}

/**
 * The worker's platforms. `explicit` (`linux/amd64`, `linux/arm64=emulated`) wins when given;
 * otherwise the native platform plus each of `emulate`. An emulated platform needs its qemu binfmt
 * handler registered (else WORKER_CONFIG: a platform that cannot run must not be advertised), and
 * the native platform is never emulated.
 */
export function resolvePlatforms(o: {
  explicit?: readonly string[];
  emulate?: readonly string[];
  arch?: string;
  binfmtDir?: string;
}): WorkerPlatform[] {
  const native = nativePlatform(o.arch);
  const wanted: WorkerPlatform[] = o.explicit?.length
    ? o.explicit.map((s) => {
        const [p = '', mode = 'native'] = s.split('=');
        if (mode !== 'native' && mode !== 'emulated')
          throw new WorkerConfigError(`platform ${s}: mode must be native or emulated`);
        return { ...parsePlatformChecked(p), emulated: mode === 'emulated' };
      })
    : [
        { ...native, emulated: false },
        ...(o.emulate ?? []).map((s) => ({ ...parsePlatformChecked(s), emulated: true })),
      ];
  const seen = new Set<string>();
  const out: WorkerPlatform[] = [];
  for (const p of wanted) {
    const key = formatPlatform(p);
    if (seen.has(key)) continue;
    seen.add(key);
    if (p.emulated) {
      if (platformMatches(p, native)) continue;
      if (!binfmtRegistered(p, o.binfmtDir))
        throw new WorkerConfigError(
          `platform ${key} is configured as emulated but no qemu binfmt handler is registered for it`,
        );
    }
    out.push(p);
  }
  return out;
}

function parsePlatformChecked(s: string): Platform {
  try {
    return parsePlatform(s.trim());
  } catch (err) {
    throw new WorkerConfigError(`bad platform "${s}"`, err);
  }
}
