/**
 * The one OCI platform type, with containerd's `platforms` rules: parse, format, normalize, match.
 * Every package takes its platforms from here (LLB, the bus's subjects, registries, workers).
 */
import { KilnError } from './errors.js';
import type { pb } from './gen/protocol.js';

/** An OCI platform (the image-spec's `platform` object): `os/architecture[/variant]`. */
export interface Platform {
  readonly os: string;
  readonly architecture: string;
  readonly variant?: string;
  readonly osVersion?: string;
  readonly osFeatures?: readonly string[];
}

/** A platform string or object that is not `os/arch[/variant]`. Code `INVALID_PLATFORM`. */
export class InvalidPlatformError extends KilnError {
  constructor(spec: string, why = 'want os/arch[/variant]') {
    super('INVALID_PLATFORM', `invalid platform ${JSON.stringify(spec)}: ${why}`, {
      details: { platform: spec },
    });
  }
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

/** containerd's `normalizeArch`, plus node's `process.arch` names (`x64`, `ia32`). */
function normalizeArch(arch: string, variant: string): [string, string] {
  arch = arch.toLowerCase();
  variant = variant.toLowerCase();
  switch (arch) {
    case 'i386':
    case 'ia32':
      return ['386', ''];
    case 'x86_64':
    case 'x86-64':
    case 'x64':
    case 'amd64':
      return ['amd64', variant === 'v1' ? '' : variant];
    case 'aarch64':
    case 'arm64':
      return ['arm64', variant === '8' || variant === 'v8' ? '' : variant];
    case 'armhf':
      return ['arm', 'v7'];
    case 'armel':
      return ['arm', 'v6'];
    case 'arm':
      if (variant === '' || variant === '7') return ['arm', 'v7'];
      if (variant === '5' || variant === '6' || variant === '8') return ['arm', `v${variant}`];
      return ['arm', variant];
    default:
      return [arch, variant];
  }
}

/**
 * containerd's `platforms.Normalize`: lower case, `macos` is `darwin`, architecture aliases
 * (`x86_64`, `aarch64`, `armhf`...), `amd64/v1` is `amd64`, `arm64/v8` is `arm64`, `arm` is
 * `arm/v7`. `osVersion` and `osFeatures` are kept as they are.
 */
export function normalizePlatform(p: Platform): Platform {
  const os = p.os.toLowerCase() === 'macos' ? 'darwin' : p.os.toLowerCase();
  const [architecture, variant] = normalizeArch(p.architecture, p.variant ?? '');
  const out: { -readonly [K in keyof Platform]: Platform[K] } = { os, architecture };
  if (variant) out.variant = variant;
  if (p.osVersion) out.osVersion = p.osVersion;
  if (p.osFeatures) out.osFeatures = [...p.osFeatures];
  return Object.freeze(out);
}

const KNOWN_ARCHES = new Set([
  '386',
  'amd64',
  'arm',
  'arm64',
  'loong64',
  'mips',
  'mips64',
  'mips64le',
  'mipsle',
  'ppc64',
  'ppc64le',
  'riscv64',
  's390x',
  'wasm',
]);

/**
 * Parses `os/arch[/variant]`, or a bare known architecture (`arm64`, `x86_64`...) meaning linux,
 * into a normalized platform. Anything else is an {@link InvalidPlatformError}.
 */
export function parsePlatform(spec: string): Platform {
  const parts = spec.trim().split('/');
  if (parts.some((p) => p === '') || parts.length > 3) throw new InvalidPlatformError(spec);
  if (parts.length === 1) {
    const p = normalizePlatform({ os: 'linux', architecture: parts[0]! });
    if (!KNOWN_ARCHES.has(p.architecture)) throw new InvalidPlatformError(spec);
    return p;
  }
  const [os, architecture, variant] = parts as [string, string, string | undefined];
  return normalizePlatform(variant ? { os, architecture, variant } : { os, architecture });
}

/**
 * Whether a normalized platform names an architecture Go (and so BuildKit's images) knows:
 * `linux/amd65` parses, but no image or worker will ever have it.
 */
export function isKnownArchitecture(p: Platform): boolean {
  return KNOWN_ARCHES.has(normalizePlatform(p).architecture);
}

/** `os/arch[/variant]` of the normalized platform. */
export function formatPlatform(p: Platform): string {
  const n = normalizePlatform(p);
  return [n.os, n.architecture, n.variant].filter(Boolean).join('/');
}

/**
 * Whether two platforms are the same after normalization (os, architecture, variant): the exact
 * match a worker's platform and an image index entry are held to. `osVersion`/`osFeatures` are
 * not compared (Windows only). Two undefined platforms match; one undefined does not.
 */
export function platformMatches(a: Platform | undefined, b: Platform | undefined): boolean {
  if (!a || !b) return a === b;
  return formatPlatform(a) === formatPlatform(b);
}

/** The platform this process runs on. */
export function hostPlatform(): Platform {
  return normalizePlatform({
    os: process.platform === 'win32' ? 'windows' : process.platform,
    architecture: process.arch,
  });
}

/** An LLB / task message platform as a {@link Platform}; undefined when it names no os or architecture. */
export function platformFromPb(p: pb.IPlatform | null | undefined): Platform | undefined {
  if (!p?.OS || !p.Architecture) return undefined;
  const out: { -readonly [K in keyof Platform]: Platform[K] } = {
    os: p.OS,
    architecture: p.Architecture,
  };
  if (p.Variant) out.variant = p.Variant;
  if (p.OSVersion) out.osVersion = p.OSVersion;
  if (p.OSFeatures?.length) out.osFeatures = [...p.OSFeatures];
  return out;
}

/** A {@link Platform} as an LLB / task message platform (`Variant` always set, `''` when none). */
export function platformToPb(p: Platform): pb.IPlatform {
  return {
    OS: p.os,
    Architecture: p.architecture,
    Variant: p.variant ?? '',
    ...(p.osVersion ? { OSVersion: p.osVersion } : {}),
    ...(p.osFeatures?.length ? { OSFeatures: [...p.osFeatures] } : {}),
  };
}
