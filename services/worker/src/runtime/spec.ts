import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { DEFAULT_HOSTNAME, DEFAULT_PATH } from './hosts.js';
import { seccompFor } from './seccomp.js';
import type { OciSeccomp } from './seccomp.js';
import type { ResolvedUser } from './user.js';
import type { ContainerMount, NetworkMode, SecurityMode, Ulimit } from './types.js';

/** containerd's default capability set, which BuildKit uses for the sandbox security mode. */
export const DEFAULT_CAPABILITIES = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FSETID',
  'CAP_FOWNER',
  'CAP_MKNOD',
  'CAP_NET_RAW',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETFCAP',
  'CAP_SETPCAP',
  'CAP_NET_BIND_SERVICE',
  'CAP_SYS_CHROOT',
  'CAP_KILL',
  'CAP_AUDIT_WRITE',
];

/** Every capability up to CAP_CHECKPOINT_RESTORE (Linux 5.9), in bit order, for the insecure mode. */
export const ALL_CAPABILITIES = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_DAC_READ_SEARCH',
  'CAP_FOWNER',
  'CAP_FSETID',
  'CAP_KILL',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETPCAP',
  'CAP_LINUX_IMMUTABLE',
  'CAP_NET_BIND_SERVICE',
  'CAP_NET_BROADCAST',
  'CAP_NET_ADMIN',
  'CAP_NET_RAW',
  'CAP_IPC_LOCK',
  'CAP_IPC_OWNER',
  'CAP_SYS_MODULE',
  'CAP_SYS_RAWIO',
  'CAP_SYS_CHROOT',
  'CAP_SYS_PTRACE',
  'CAP_SYS_PACCT',
  'CAP_SYS_ADMIN',
  'CAP_SYS_BOOT',
  'CAP_SYS_NICE',
  'CAP_SYS_RESOURCE',
  'CAP_SYS_TIME',
  'CAP_SYS_TTY_CONFIG',
  'CAP_MKNOD',
  'CAP_LEASE',
  'CAP_AUDIT_WRITE',
  'CAP_AUDIT_CONTROL',
  'CAP_SETFCAP',
  'CAP_MAC_OVERRIDE',
  'CAP_MAC_ADMIN',
  'CAP_SYSLOG',
  'CAP_WAKE_ALARM',
  'CAP_BLOCK_SUSPEND',
  'CAP_AUDIT_READ',
  'CAP_PERFMON',
  'CAP_BPF',
  'CAP_CHECKPOINT_RESTORE',
];

const MASKED_PATHS = [
  '/proc/acpi',
  '/proc/asound',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/sys/firmware',
  '/proc/scsi',
  '/sys/devices/virtual/powercap',
];
const READONLY_PATHS = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

/** The parts of the OCI runtime spec (config.json) that Kiln writes. */
export interface OciMount {
  destination: string;
  type: string;
  source: string;
  options: string[];
}
export interface OciDevice {
  path: string;
  type: 'c' | 'b';
  major: number;
  minor: number;
  fileMode: number;
  uid: number;
  gid: number;
}
export interface OciSpec {
  ociVersion: string;
  process: {
    terminal: boolean;
    user: { uid: number; gid: number; additionalGids?: number[] };
    args: string[];
    env: string[];
    cwd: string;
    capabilities: { bounding: string[]; effective: string[]; permitted: string[] };
    rlimits?: Array<{ type: string; hard: number; soft: number }>;
    noNewPrivileges: boolean;
  };
  root: { path: string; readonly: boolean };
  hostname: string;
  mounts: OciMount[];
  /** Runtime-specific settings (crun's `run.oci.*`). */
  annotations?: Record<string, string>;
  linux: {
    namespaces: Array<{ type: string; path?: string }>;
    maskedPaths?: string[];
    readonlyPaths?: string[];
    resources: {
      devices: Array<{
        allow: boolean;
        access: string;
        type?: string;
        major?: number;
        minor?: number;
      }>;
    };
    devices?: OciDevice[];
    cgroupsPath?: string;
    seccomp?: OciSeccomp;
  };
}

export interface SpecInput {
  id: string;
  rootfs: string;
  readonlyRootfs: boolean;
  args: string[];
  env: string[];
  cwd: string;
  user: ResolvedUser;
  hostname: string | undefined;
  network: NetworkMode;
  security: SecurityMode;
  ulimits: Ulimit[];
  /** The container's cgroup (`linux.cgroupsPath`); undefined: the runtime's default. */
  cgroupsPath: string | undefined;
  /** Host paths of the generated files. */
  resolvConf: string;
  hosts: string;
  mounts: ContainerMount[];
  /** The network namespace to join for the `sandbox` network; without it, the host's network. */
  netnsPath?: string;
  /** Host devices for the insecure mode (see {@link hostDevices}). */
  devices?: OciDevice[];
  /** Capabilities this process may grant (its bounding set); the insecure mode grants all of them. */
  hostCapabilities?: readonly string[];
}

/** Adds the default PATH unless the environment sets one (BuildKit does the same). */
export function withDefaultPath(env: readonly string[]): string[] {
  return env.some((e) => e.startsWith('PATH=')) ? [...env] : [...env, `PATH=${DEFAULT_PATH}`];
}

/**
 * The OCI runtime spec of a build container, as BuildKit's `executor/oci.GenerateSpec` makes it
 * from containerd's defaults: the usual /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys and
 * cgroup mounts (no /run, BuildKit removes it), generated /etc/resolv.conf and /etc/hosts bound
 * read-only, pid/ipc/uts/mount namespaces plus a network one unless the network is the host's,
 * masked and read-only /proc paths, Docker's default seccomp profile for the granted capabilities,
 * new privileges allowed, no rlimits unless asked. The insecure mode has none of the masks, the
 * read-only paths or the seccomp filter.
 */
export function generateSpec(i: SpecInput): OciSpec {
  const insecure = i.security === 'insecure';
  const grantable = i.hostCapabilities === undefined ? undefined : new Set(i.hostCapabilities);
  const caps = (insecure ? ALL_CAPABILITIES : DEFAULT_CAPABILITIES).filter(
    (c) => grantable?.has(c) ?? true,
  );
  const sysOpts = ['nosuid', 'noexec', 'nodev', insecure ? 'rw' : 'ro'];
  const mounts: OciMount[] = [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    {
      destination: '/dev',
      type: 'tmpfs',
      source: 'tmpfs',
      options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'],
    },
    {
      destination: '/dev/pts',
      type: 'devpts',
      source: 'devpts',
      options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'],
    },
    {
      destination: '/dev/shm',
      type: 'tmpfs',
      source: 'shm',
      options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'],
    },
    {
      destination: '/dev/mqueue',
      type: 'mqueue',
      source: 'mqueue',
      options: ['nosuid', 'noexec', 'nodev'],
    },
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: sysOpts },
    {
      destination: '/sys/fs/cgroup',
      type: 'cgroup',
      source: 'cgroup',
      options: [...sysOpts, 'relatime'],
    },
    {
      destination: '/etc/resolv.conf',
      type: 'bind',
      source: i.resolvConf,
      options: ['rbind', 'ro'],
    },
    { destination: '/etc/hosts', type: 'bind', source: i.hosts, options: ['rbind', 'ro'] },
  ];
  for (const m of i.mounts) {
    if (m.type === 'bind') {
      mounts.push({
        destination: m.destination,
        type: 'bind',
        source: m.source,
        options: ['rbind', m.readonly ? 'ro' : 'rw'],
      });
    } else {
      const opts = ['nosuid', 'nodev', 'mode=1777'];
      if (m.size !== undefined && m.size > 0) opts.push(`size=${m.size}`);
      if (m.readonly) opts.push('ro');
      mounts.push({ destination: m.destination, type: 'tmpfs', source: 'tmpfs', options: opts });
    }
  }

  const namespaces: Array<{ type: string; path?: string }> = [
    { type: 'pid' },
    { type: 'ipc' },
    { type: 'uts' },
    { type: 'mount' },
  ];
  if (i.network === 'none') namespaces.push({ type: 'network' });
  else if (i.network === 'sandbox' && i.netnsPath !== undefined)
    namespaces.push({ type: 'network', path: i.netnsPath });

  const spec: OciSpec = {
    ociVersion: '1.0.2',
    process: {
      terminal: false,
      user: { uid: i.user.uid, gid: i.user.gid },
      args: i.args,
      env: withDefaultPath(i.env),
      cwd: i.cwd,
      capabilities: { bounding: caps, effective: caps, permitted: caps },
      noNewPrivileges: false,
    },
    root: { path: i.rootfs, readonly: i.readonlyRootfs },
    hostname: i.hostname === undefined || i.hostname === '' ? DEFAULT_HOSTNAME : i.hostname,
    mounts: dedupMounts(mounts),
    linux: {
      namespaces,
      resources: { devices: [{ allow: insecure, access: 'rwm' }] },
    },
  };
  if (i.user.additionalGids.length > 0) spec.process.user.additionalGids = i.user.additionalGids;
  if (i.ulimits.length > 0) {
    spec.process.rlimits = i.ulimits.map((u) => ({
      type: `RLIMIT_${u.name.toUpperCase()}`,
      hard: u.hard,
      soft: u.soft,
    }));
  }
  if (!insecure) {
    spec.linux.maskedPaths = MASKED_PATHS;
    spec.linux.readonlyPaths = READONLY_PATHS;
    spec.linux.seccomp = seccompOf(caps);
  } else if (i.devices !== undefined && i.devices.length > 0) {
    spec.linux.devices = i.devices;
  }
  if (i.cgroupsPath !== undefined) spec.linux.cgroupsPath = i.cgroupsPath;
  return spec;
}

const seccompByCaps = new Map<string, OciSeccomp>();

/** Docker's default profile for `caps` (made once per capability set: every RUN asks). */
export function seccompOf(caps: readonly string[]): OciSeccomp {
  const key = caps.join(',');
  let s = seccompByCaps.get(key);
  if (s === undefined) seccompByCaps.set(key, (s = seccompFor(caps)));
  return s;
}

/** Later mounts on the same destination replace earlier ones (BuildKit's dedupMounts). */
function dedupMounts(mounts: OciMount[]): OciMount[] {
  const out: OciMount[] = [];
  const index = new Map<string, number>();
  for (const m of mounts) {
    const key = join('/', m.destination);
    const at = index.get(key);
    if (at !== undefined) out[at] = m;
    else {
      index.set(key, out.length);
      out.push(m);
    }
  }
  return out;
}

/** The capabilities in this process' bounding set (what a container started from here can get). */
export async function boundingCapabilities(): Promise<string[]> {
  const status = await readFile('/proc/self/status', 'utf8');
  const m = /^CapBnd:\s*([0-9a-f]+)$/m.exec(status);
  if (m === null) return [...ALL_CAPABILITIES];
  const mask = BigInt(`0x${m[1]!}`);
  return ALL_CAPABILITIES.filter((_c, bit) => (mask & (1n << BigInt(bit))) !== 0n);
}

/** The host's top-level character and block devices (containerd's WithHostDevices), for insecure runs. */
export async function hostDevices(): Promise<OciDevice[]> {
  const out: OciDevice[] = [];
  const skip = new Set(['console', 'ptmx', 'tty', 'null', 'zero', 'full', 'random', 'urandom']);
  for (const name of await readdir('/dev')) {
    if (skip.has(name)) continue;
    let st;
    try {
      st = await stat(join('/dev', name));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw err;
    }
    if (!st.isCharacterDevice() && !st.isBlockDevice()) continue;
    out.push({
      path: join('/dev', name),
      type: st.isCharacterDevice() ? 'c' : 'b',
      major: Math.floor(st.rdev / 256) & 0xfff,
      minor: (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00),
      fileMode: st.mode & 0o7777,
      uid: st.uid,
      gid: st.gid,
    });
  }
  return out;
}
