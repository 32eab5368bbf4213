import { InvalidDefinitionError } from './errors.js';

/** An OCI platform (os/architecture[/variant]). */
export interface Platform {
  readonly os: string;
  readonly architecture: string;
  readonly variant?: string;
  readonly osVersion?: string;
  readonly osFeatures?: readonly string[];
}

export const LinuxAmd64: Platform = Object.freeze({ os: 'linux', architecture: 'amd64' });
export const LinuxArm64: Platform = Object.freeze({ os: 'linux', architecture: 'arm64' });
export const LinuxArmhf: Platform = Object.freeze({
  os: 'linux',
  architecture: 'arm',
  variant: 'v7',
});
export const LinuxArmel: Platform = Object.freeze({
  os: 'linux',
  architecture: 'arm',
  variant: 'v6',
});
export const LinuxS390x: Platform = Object.freeze({ os: 'linux', architecture: 's390x' });
export const LinuxPpc64le: Platform = Object.freeze({ os: 'linux', architecture: 'ppc64le' });
export const LinuxRiscv64: Platform = Object.freeze({ os: 'linux', architecture: 'riscv64' });

const archAliases: Record<string, [string, string?]> = {
  x86_64: ['amd64'],
  'x86-64': ['amd64'],
  aarch64: ['arm64'],
  armhf: ['arm', 'v7'],
  armel: ['arm', 'v6'],
  i386: ['386'],
  ia32: ['386'],
  x64: ['amd64'],
};

/** Normalizes architecture names the way containerd's platforms package does. */
export function normalizePlatform(p: Platform): Platform {
  let architecture = p.architecture.toLowerCase();
  let variant = p.variant;
  const alias = archAliases[architecture];
  if (alias) {
    architecture = alias[0];
    variant = variant ?? alias[1];
  }
  if (architecture === 'arm64' && (variant === 'v8' || variant === '8')) variant = undefined;
  if (architecture === 'arm' && variant === undefined) variant = 'v7';
  if (architecture === 'arm' && variant && /^\d+$/.test(variant)) variant = `v${variant}`;
  const out: { -readonly [K in keyof Platform]: Platform[K] } = {
    os: p.os.toLowerCase(),
    architecture,
  };
  if (variant) out.variant = variant;
  if (p.osVersion) out.osVersion = p.osVersion;
  if (p.osFeatures) out.osFeatures = [...p.osFeatures];
  return Object.freeze(out);
}

/** Parses `os/arch[/variant]` (or a bare `arch`, meaning linux) into a normalized platform. */
export function parsePlatform(spec: string): Platform {
  const parts = spec.trim().split('/');
  if (parts.some((p) => p === '') || parts.length > 3) {
    throw new InvalidDefinitionError(
      'LLB_BUILD',
      `invalid platform "${spec}": want os/arch[/variant]`,
    );
  }
  if (parts.length === 1) return normalizePlatform({ os: 'linux', architecture: parts[0]! });
  const [os, architecture, variant] = parts as [string, string, string | undefined];
  return normalizePlatform(variant ? { os, architecture, variant } : { os, architecture });
}

export function formatPlatform(p: Platform): string {
  return [p.os, p.architecture, p.variant].filter(Boolean).join('/');
}

export function platformsEqual(a: Platform | undefined, b: Platform | undefined): boolean {
  if (!a || !b) return a === b;
  return formatPlatform(normalizePlatform(a)) === formatPlatform(normalizePlatform(b));
}

/** The platform this process runs on. */
export function hostPlatform(): Platform {
  return normalizePlatform({
    os: process.platform === 'win32' ? 'windows' : process.platform,
    architecture: process.arch,
  });
}
