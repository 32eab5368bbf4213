import { release } from 'node:os';
import { DOCKER_DEFAULT_SECCOMP } from './seccomp-default.js';

/** A seccomp profile in Docker's format (`profiles/seccomp/default.json`). */
export interface DockerSeccompProfile {
  defaultAction: string;
  defaultErrnoRet?: number;
  archMap: Array<{ architecture: string; subArchitectures: string[] | null }>;
  syscalls: Array<{
    names: string[];
    action: string;
    errnoRet?: number;
    args?: Array<{ index: number; value: number; valueTwo?: number; op: string }>;
    comment?: string;
    includes?: { caps?: string[]; arches?: string[]; minKernel?: string };
    excludes?: { caps?: string[]; arches?: string[] };
  }>;
}

/** The OCI runtime spec's `linux.seccomp`. */
export interface OciSeccomp {
  defaultAction: string;
  defaultErrnoRet?: number;
  architectures: string[];
  syscalls: Array<{
    names: string[];
    action: string;
    errnoRet?: number;
    args?: Array<{ index: number; value: number; valueTwo?: number; op: string }>;
  }>;
}

/** Node's `process.arch` as Go's GOARCH (the names the profile's `arches` use). */
const GOARCH: Record<string, string> = {
  x64: 'amd64',
  ia32: '386',
  arm64: 'arm64',
  arm: 'arm',
  ppc64: 'ppc64le',
  s390x: 's390x',
  riscv64: 'riscv64',
  mips64el: 'mips64le',
};
/** GOARCH as libseccomp's architecture (moby's `goToNative`). */
const SCMP_ARCH: Record<string, string> = {
  '386': 'SCMP_ARCH_X86',
  amd64: 'SCMP_ARCH_X86_64',
  arm: 'SCMP_ARCH_ARM',
  arm64: 'SCMP_ARCH_AARCH64',
  ppc64le: 'SCMP_ARCH_PPC64LE',
  s390x: 'SCMP_ARCH_S390X',
  riscv64: 'SCMP_ARCH_RISCV64',
  mips64le: 'SCMP_ARCH_MIPSEL64',
};

/** `a.b` kernel versions compared numerically; true when `have` is at least `want`. */
function kernelAtLeast(have: string, want: string): boolean {
  const h = have.split(/[.-]/).map((p) => parseInt(p, 10));
  const w = want.split('.').map((p) => parseInt(p, 10));
  for (let i = 0; i < w.length; i++) {
    const a = h[i] ?? 0;
    const b = w[i] ?? 0;
    if (Number.isNaN(a) || a !== b) return !Number.isNaN(a) && a > b;
  }
  return true;
}

/**
 * The OCI seccomp filter of a container from a Docker-format profile, as moby's
 * `profiles/seccomp.Setup` (and so BuildKit's default): the native architecture and its
 * sub-architectures, and each rule whose `includes` all hold (every listed capability in the
 * container's bounding set, the machine's architecture listed, the kernel recent enough) and
 * whose `excludes` do not (no listed capability granted, the architecture not listed).
 */
export function seccompFor(
  capabilities: readonly string[],
  profile: DockerSeccompProfile = DOCKER_DEFAULT_SECCOMP,
  arch: string = process.arch,
  kernel: string = release(),
): OciSeccomp {
  const goArch = GOARCH[arch] ?? arch;
  const native = SCMP_ARCH[goArch];
  const caps = new Set(capabilities);
  const architectures: string[] = [];
  for (const a of profile.archMap) {
    if (a.architecture === native)
      architectures.push(a.architecture, ...(a.subArchitectures ?? []));
  }
  const syscalls: OciSeccomp['syscalls'] = [];
  for (const s of profile.syscalls) {
    const inc = s.includes ?? {};
    const exc = s.excludes ?? {};
    if (inc.arches !== undefined && inc.arches.length > 0 && !inc.arches.includes(goArch)) continue;
    if (exc.arches?.includes(goArch)) continue;
    if (inc.caps !== undefined && !inc.caps.every((c) => caps.has(c))) continue;
    if (exc.caps?.some((c) => caps.has(c))) continue;
    if (inc.minKernel !== undefined && !kernelAtLeast(kernel, inc.minKernel)) continue;
    const rule: OciSeccomp['syscalls'][number] = { names: s.names, action: s.action };
    if (s.errnoRet !== undefined) rule.errnoRet = s.errnoRet;
    if (s.args !== undefined && s.args.length > 0) rule.args = s.args;
    syscalls.push(rule);
  }
  const out: OciSeccomp = { defaultAction: profile.defaultAction, architectures, syscalls };
  if (profile.defaultErrnoRet !== undefined) out.defaultErrnoRet = profile.defaultErrnoRet;
  return out;
}
