/**
 * Build and target platforms and the automatic platform ARGs (BuildKit's
 * `dockerfile2llb/platform.go`).
 */
import { formatPlatform, hostPlatform, normalizePlatform } from '@kiln/llb';
import type { Platform } from '@kiln/llb';
import type { ImageConfig } from './image-config.js';

export interface PlatformOpt {
  targetPlatform: Platform;
  buildPlatforms: Platform[];
  /** No target platform was requested: the base image's may be used (autoDetectPlatform). */
  implicitTarget: boolean;
}

/** Resolves the platforms of one conversion: the build platform defaults to the host's. */
export function buildPlatformOpt(
  buildPlatform: Platform | undefined,
  targetPlatform: Platform | undefined,
): PlatformOpt {
  const build = normalizePlatform(buildPlatform ?? linuxHost());
  return {
    buildPlatforms: [build],
    targetPlatform: targetPlatform ? normalizePlatform(targetPlatform) : build,
    implicitTarget: targetPlatform === undefined,
  };
}

function linuxHost(): Platform {
  const h = hostPlatform();
  return h.os === 'linux' ? h : { os: 'linux', architecture: h.architecture };
}

/**
 * The ARGs every Dockerfile has without declaring them (BuildKit's defaultArgs): BUILDPLATFORM,
 * BUILDOS, BUILDOSVERSION, BUILDARCH, BUILDVARIANT, the same for TARGET, and TARGETSTAGE. A build
 * arg of the same name overrides.
 */
export function defaultArgs(
  po: PlatformOpt,
  overrides: Readonly<Record<string, string>>,
  target: string,
): Map<string, string> {
  const bp = po.buildPlatforms[0]!;
  const tp = po.targetPlatform;
  const pairs: [string, string][] = [
    ['BUILDPLATFORM', formatPlatform(bp)],
    ['BUILDOS', bp.os],
    ['BUILDOSVERSION', bp.osVersion ?? ''],
    ['BUILDARCH', bp.architecture],
    ['BUILDVARIANT', bp.variant ?? ''],
    ['TARGETPLATFORM', formatPlatform(tp)],
    ['TARGETOS', tp.os],
    ['TARGETOSVERSION', tp.osVersion ?? ''],
    ['TARGETARCH', tp.architecture],
    ['TARGETVARIANT', tp.variant ?? ''],
    ['TARGETSTAGE', target],
  ];
  const env = new Map<string, string>();
  for (const [k, v] of pairs) env.set(k, Object.hasOwn(overrides, k) ? overrides[k]! : v);
  return env;
}

/** The platform a base image really is, when it differs from the target and the target was implicit. */
export function autoDetectPlatform(
  img: ImageConfig,
  target: Platform,
  supported: readonly Platform[],
): Platform {
  if (target.os === img.os && target.architecture === img.architecture) return target;
  for (const p of supported) if (p.os === img.os && p.architecture === img.architecture) return p;
  return target;
}

/** The shell of the shell form when the image sets none. */
export function defaultShell(os: string): string[] {
  return os === 'windows' ? ['cmd', '/S', '/C'] : ['/bin/sh', '-c'];
}

/**
 * The suffix BuildKit adds to a multi-platform step name when TARGET* values differ from the
 * platform the step runs on (cross compilation): `->arm64`.
 */
export function formatTargetPlatform(
  base: Platform,
  target: Partial<Platform> | undefined,
): string {
  if (!target) return '';
  const p = normalizePlatform({
    ...target,
    os: target.os || base.os,
    architecture: target.architecture || base.architecture,
  });
  if (p.os === base.os && p.architecture !== base.architecture)
    return '->' + p.architecture + (p.variant ? '/' + p.variant : '');
  if (p.os !== base.os) return '->' + formatPlatform(p);
  return '';
}
