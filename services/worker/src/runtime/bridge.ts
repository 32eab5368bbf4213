import { spawn, execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { mkdir, open, readFile, readdir, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { RuntimeError, RuntimeErrorCode } from './errors.js';
import { pidAlive } from '@kiln/common';

const execFileP = promisify(execFile);

/** Where addresses are leased, one directory per bridge subnet. */
const DEFAULT_IPAM_ROOT = '/run/kiln/ipam';

export interface BridgeOptions {
  /** Bridge device name. Default `kiln0`. */
  name?: string;
  /** An IPv4 /16 as `a.b.0.0/16`; the bridge takes `a.b.0.1`. Default `10.89.0.0/16`. */
  subnet?: string;
  /** Where addresses are leased (shared by every worker process on the machine). Default `/run/kiln/ipam`. */
  ipamDir?: string;
  /**
   * Namespaces made ahead of time, so that a container's start does not wait for `ip` (BuildKit's
   * CNI pool). Default 4; 0 makes each one on demand.
   */
  poolSize?: number;
  /**
   * Namespaces kept when they come back from containers (at least `poolSize`). Default 32: the
   * RUNs a worker runs at once each get one, and a namespace deleted on its return is one made
   * again at the next burst (three `ip` forks of the worker). Idle ones cost a veth pair each.
   */
  poolMax?: number;
  /**
   * Addresses containers may not reach besides the host's own (always refused): the farm's
   * control plane. IPv4 addresses, CIDRs or host names (resolved at setup).
   */
  deny?: readonly string[];
  /**
   * The network namespace (a name under /run/netns) the bridge lives in instead of this
   * process's own: a worker in a user namespace makes its bridge in a namespace it owns, whose
   * way out is slirp4netns (see SlirpRouter). Undefined: this process's namespace (the host's).
   */
  netns?: string;
}

/** A namespace on the bridge with its leased address, before it is handed to a container. */
interface Netns {
  id: string;
  ip: string;
}

/**
 * A container's network namespace on the bridge. `release` gives it back: to the pool when
 * `reusable` (see {@link BridgeNetwork.attach}), else it is deleted and its address freed.
 */
export interface BridgeAttachment {
  /** Path of the network namespace (for the OCI spec). */
  nsPath: string;
  ip: string;
  gateway: string;
  release(reusable?: boolean): Promise<void>;
}

async function run(cmd: string, args: string[], input?: string): Promise<void> {
  if (input === undefined) {
    try {
      await execFileP(cmd, args);
      return;
    } catch (err) {
      const msg = (err as { stderr?: string }).stderr?.trim() ?? (err as Error).message;
      throw new Error(`${cmd} ${args.join(' ')}: ${msg}`, { cause: err });
    }
  }
  await new Promise<void>((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0
        ? resolve()
        : reject(new Error(`${cmd} ${args.join(' ')}: ${stderr.trim() || `exit ${code}`}`)),
    );
    child.stdin.end(input);
  });
}

/**
 * BuildKit's default (`sandbox`) network, done with iproute2 and iptables instead of CNI: a Linux
 * bridge with NAT to the outside, and per container a network namespace with a veth pair, an
 * address from the bridge's /16, `lo` up and a default route. Addresses are leased with one file
 * per address (created exclusively, holding the owner's pid), so workers in several processes
 * share the bridge; a lease whose process is gone is taken over.
 *
 * Containers reach only the outside: whatever they send to the host itself (the gateway, any of
 * its addresses, so services bound to 0.0.0.0) is refused (chain `KILN-IN-<bridge>` on INPUT),
 * as is what they send to the denied addresses (chain `KILN-FWD-<bridge>` on FORWARD).
 */
export class BridgeNetwork {
  readonly name: string;
  readonly gateway: string;
  private readonly prefix: string;
  private readonly ipamDir: string;
  private readonly poolSize: number;
  /** See {@link BridgeOptions.netns}. */
  private readonly netns: string | undefined;
  private readonly poolMax: number;
  /** Namespaces ready for a container: fresh ones, and ones given back as reusable. */
  readonly #pool: Netns[] = [];
  /** Namespaces being made for the pool (a close waits for them, then deletes them). */
  readonly #filling = new Set<Promise<unknown>>();
  /** Attached namespaces that may come back (see {@link attach}): the pool counts them. */
  #out = 0;
  #closed = false;

  private constructor(opts: BridgeOptions) {
    this.name = opts.name ?? 'kiln0';
    const subnet = opts.subnet ?? '10.89.0.0/16';
    const m = /^(\d+)\.(\d+)\.0\.0\/16$/.exec(subnet);
    if (m === null)
      throw new RuntimeError(
        RuntimeErrorCode.Io,
        `bridge subnet must be a.b.0.0/16, got ${subnet}`,
      );
    this.prefix = `${m[1]!}.${m[2]!}`;
    this.gateway = `${this.prefix}.0.1`;
    this.ipamDir = join(opts.ipamDir ?? DEFAULT_IPAM_ROOT, `${this.prefix}.0.0-16`);
    this.poolSize = opts.poolSize ?? 4;
    this.netns = opts.netns;
    this.poolMax = Math.max(this.poolSize, opts.poolMax ?? 32);
  }

  /** `ip` in the bridge's namespace. */
  private ip(...args: string[]): string[] {
    return this.netns === undefined ? args : ['-n', this.netns, ...args];
  }

  /** `cmd args` as run in the bridge's namespace. */
  private inNetns(cmd: string, args: string[]): [string, string[]] {
    return this.netns === undefined
      ? [cmd, args]
      : ['nsenter', [`--net=/run/netns/${this.netns}`, cmd, ...args]];
  }

  /** Creates the bridge, its address, forwarding and the NAT rule when missing (idempotent). */
  static async setup(opts: BridgeOptions = {}): Promise<BridgeNetwork> {
    const b = new BridgeNetwork(opts);
    try {
      await mkdir(b.ipamDir, { recursive: true, mode: 0o700 });
      const exists = await execFileP('ip', b.ip('link', 'show', b.name)).then(
        () => true,
        () => false,
      );
      if (!exists) {
        await run('ip', b.ip('link', 'add', b.name, 'type', 'bridge')).catch(
          async (err: unknown) => {
            // another process may have created it in the meantime
            const now = await execFileP('ip', b.ip('link', 'show', b.name)).then(
              () => true,
              () => false,
            );
            if (!now) throw err;
          },
        );
      }
      const addrs = (await execFileP('ip', b.ip('-o', '-4', 'addr', 'show', 'dev', b.name))).stdout;
      if (!addrs.includes(` ${b.gateway}/16 `)) {
        await run('ip', b.ip('addr', 'add', `${b.gateway}/16`, 'dev', b.name)).catch(
          (err: unknown) => {
            if (!/File exists/.test((err as Error).message)) throw err;
          },
        );
      }
      // No IPv6 on the bridge (the sandbox network is IPv4): without an address, link-local
      // included, the host drops IPv6 that a RUN sends to it, which the IPv4 rules do not see.
      await b.disableIpv6(b.name);
      await run('ip', b.ip('link', 'set', b.name, 'up'));
      if (b.netns !== undefined) {
        // /proc/sys/net is the reading process's namespace's: written from inside the bridge's.
        await run(...b.inNetns('sh', ['-c', 'echo 1 > /proc/sys/net/ipv4/ip_forward']));
      } else if ((await readFile('/proc/sys/net/ipv4/ip_forward', 'utf8')).trim() !== '1') {
        await writeFile('/proc/sys/net/ipv4/ip_forward', '1\n');
      }
      const subnet = `${b.prefix}.0.0/16`;
      await b.ensureRule([
        '-t',
        'nat',
        'POSTROUTING',
        '-s',
        subnet,
        '!',
        '-o',
        b.name,
        '-j',
        'MASQUERADE',
      ]);
      await b.ensureRule(['-t', 'filter', 'FORWARD', '-i', b.name, '-j', 'ACCEPT']);
      await b.ensureRule(['-t', 'filter', 'FORWARD', '-o', b.name, '-j', 'ACCEPT']);
    } catch (err) {
      throw new RuntimeError(
        RuntimeErrorCode.Io,
        `setting up bridge ${b.name}: ${(err as Error).message}`,
        { cause: err },
      );
    }
    try {
      await b.isolate(opts.deny ?? []);
    } catch (err) {
      // Not a reason to fall back to the host network (which isolates less): see OciRuntime.
      throw new RuntimeError(
        RuntimeErrorCode.Io,
        `isolating bridge ${b.name}: ${(err as Error).message}`,
        { cause: err, details: { isolation: true } },
      );
    }
    await b.sweep();
    b.#refill();
    return b;
  }

  /**
   * Refuses what containers send to the host (replies to the host's own connections excepted)
   * and to `deny`, in chains of this bridge jumped to first from INPUT and FORWARD. Idempotent;
   * workers sharing the bridge add their denied addresses to the same chain.
   */
  private async isolate(deny: readonly string[]): Promise<void> {
    const input = `KILN-IN-${this.name}`;
    const forward = `KILN-FWD-${this.name}`;
    for (const chain of [input, forward]) {
      await run(...this.inNetns('iptables', ['-w', '-N', chain])).catch((err: unknown) => {
        if (!/exists/i.test((err as Error).message)) throw err;
      });
    }
    const established = ['-m', 'conntrack', '--ctstate', 'ESTABLISHED,RELATED'];
    await this.ensureRule(['-t', 'filter', input, ...established, '-j', 'RETURN']);
    await this.ensureRule(['-t', 'filter', input, '-j', 'REJECT']);
    for (const cidr of await resolveDeny(deny))
      await this.ensureRule(['-t', 'filter', forward, '-d', cidr, '-j', 'REJECT']);
    // Nor routed through the gateway back onto the bridge (a RUN that routes its neighbour's
    // address via the gateway): traffic in and out of the bridge is refused.
    await this.ensureRule(['-t', 'filter', forward, '-o', this.name, '-j', 'REJECT']);
    await this.ensureRule(['-t', 'filter', 'INPUT', '-i', this.name, '-j', input], true);
    await this.ensureRule(['-t', 'filter', 'FORWARD', '-i', this.name, '-j', forward], true);
  }

  /**
   * Sets `disable_ipv6` on `dev` of the bridge's namespace (or of namespace `ns`), removing its
   * IPv6 addresses; nothing on a kernel without IPv6.
   */
  private async disableIpv6(dev: string, ns?: string): Promise<void> {
    const file = `/proc/sys/net/ipv6/conf/${dev}/disable_ipv6`;
    const script = `if [ -e /proc/sys/net/ipv6 ]; then echo 1 > ${file}; fi`;
    if (ns !== undefined) await run('nsenter', [`--net=/run/netns/${ns}`, 'sh', '-c', script]);
    else await run(...this.inNetns('sh', ['-c', script]));
  }

  /** Appends (or with `first`, inserts first) an iptables rule unless it is there (`-C` first). */
  private async ensureRule(spec: string[], first = false): Promise<void> {
    const [tflag, table, chain, ...rule] = spec;
    const args = [tflag!, table!];
    const present = await execFileP(
      ...this.inNetns('iptables', [...args, '-C', chain!, ...rule]),
    ).then(
      () => true,
      () => false,
    );
    if (!present)
      await run(
        ...this.inNetns('iptables', [
          '-w',
          ...args,
          ...(first ? ['-I', chain!, '1'] : ['-A', chain!]),
          ...rule,
        ]),
      );
  }

  /** Namespaces ready in the pool (for tests and metrics). */
  get pooled(): number {
    return this.#pool.length;
  }

  /** Deletes the pooled namespaces; later attaches make their own. */
  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all([...this.#filling]);
    await Promise.all(this.#pool.splice(0).map((n) => this.#destroy(n)));
  }

  /**
   * Tops the pool up in the background (failures only mean the next attach makes its own). The
   * namespaces out with containers count as in the pool: most come back when their container
   * ends, so a run costs no `ip` at all (each one is a fork of this large process, ~10-20 ms of
   * its event loop on these machines) unless its namespace cannot be reused.
   */
  #refill(): void {
    while (!this.#closed && this.#pool.length + this.#filling.size + this.#out < this.poolSize) {
      const filling: Promise<unknown> = this.#create(`pool-${randomBytes(6).toString('hex')}`)
        .then(
          (n) => (this.#closed ? this.#destroy(n) : void this.#pool.push(n)),
          () => undefined,
        )
        .catch(() => undefined)
        .finally(() => this.#filling.delete(filling));
      this.#filling.add(filling);
    }
  }

  /**
   * Deletes the namespaces and leases of processes that are gone (a worker killed mid-run), on
   * the whole machine. Called by {@link setup}.
   */
  async sweep(): Promise<void> {
    await sweepLeaseDir(this.ipamDir);
  }

  /**
   * {@link sweep} for every bridge leasing under `ipamRoot` (default `/run/kiln/ipam`), without
   * setting a bridge up: a worker starting calls it, so that the namespaces and veths of a killed
   * predecessor (its pool included) go at once, not at the next RUN's runtime start.
   */
  static async sweepDead(ipamRoot = DEFAULT_IPAM_ROOT): Promise<void> {
    const dirs = await readdir(ipamRoot, { withFileTypes: true }).catch((err: unknown) => {
      // None yet, or not ours to read (a worker that is not root has no bridge).
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'EACCES') return [];
      throw err;
    });
    for (const d of dirs) if (d.isDirectory()) await sweepLeaseDir(join(ipamRoot, d.name));
  }

  /**
   * A network namespace on the bridge for one container: one from the pool when there is one,
   * else made now. (`id` names a namespace made now; pooled ones have their own names.) The pool
   * is topped up in the background when a namespace out with a container is deleted instead of
   * coming back.
   *
   * `release(true)` puts it back in the pool (up to `poolMax`; BuildKit's CNI pool does the same): only for a
   * container that could not change it, i.e. one without CAP_NET_ADMIN (the default capability
   * set has none), whose processes are all gone (its pid namespace ended with it). Its interfaces,
   * address, routes and firewall are then as made; what a process leaves in a namespace (sockets)
   * dies with the process. Otherwise (`release()`, e.g. after `--security=insecure`) it is
   * deleted in the background, so nothing a container changed outlives it.
   */
  async attach(id: string): Promise<BridgeAttachment> {
    const n = this.#pool.shift() ?? (await this.#create(id));
    this.#out++;
    let released = false;
    return {
      nsPath: `/run/netns/kiln-${n.id}`,
      ip: n.ip,
      gateway: this.gateway,
      release: (reusable = false) => {
        if (released) return Promise.resolve();
        released = true;
        this.#out--;
        if (reusable && !this.#closed && this.#pool.length < this.poolMax) {
          this.#pool.push(n);
          return Promise.resolve();
        }
        // Off the container's critical path; a failure leaves a lease that sweep() reclaims.
        this.#destroy(n).catch(() => undefined);
        this.#refill();
        return Promise.resolve();
      },
    };
  }

  /** Namespace `kiln-<id>` with a veth on the bridge, an address, `lo` up and a default route. */
  async #create(id: string): Promise<Netns> {
    const ip = await this.lease(id);
    const ns = `kiln-${id}`;
    const veth = `vk${createHash('sha256').update(id).digest('hex').slice(0, 12)}`;
    try {
      if (this.netns !== undefined) {
        // `ip netns add` returns to the host's namespace after making one, which a process of
        // another user namespace may not: unshare makes it (the file is its mount point).
        await writeFile(`/run/netns/${ns}`, '');
        await run('unshare', [`--net=/run/netns/${ns}`, 'true']);
      }
      await run(
        'ip',
        this.ip('-b', '-'),
        [
          ...(this.netns === undefined ? [`netns add ${ns}`] : []),
          `link add ${veth} type veth peer name eth0 netns ${ns}`,
          `link set ${veth} master ${this.name} up`,
          // Port isolation: an isolated port reaches only the bridge (the gateway), never
          // another isolated port, so one build's RUN cannot reach another's.
          `link set dev ${veth} type bridge_slave isolated on`,
          '',
        ].join('\n'),
      );
      // Before eth0 is up, so it never gets a link-local address.
      await this.disableIpv6('eth0', ns);
      await run(
        'ip',
        ['-n', ns, '-b', '-'],
        [
          `addr add ${ip}/16 dev eth0`,
          'link set eth0 up',
          'link set lo up',
          `route add default via ${this.gateway}`,
          '',
        ].join('\n'),
      );
    } catch (err) {
      await BridgeNetwork.detach(id);
      await this.unlease(ip);
      throw new RuntimeError(
        RuntimeErrorCode.Io,
        `attaching ${id} to bridge ${this.name}: ${(err as Error).message}`,
        {
          cause: err,
        },
      );
    }
    return { id, ip };
  }

  async #destroy(n: Netns): Promise<void> {
    await BridgeNetwork.detach(n.id);
    await this.unlease(n.ip);
  }

  /** Deletes container `id`'s namespace (its veth goes with it); a missing one is fine. */
  static async detach(id: string): Promise<void> {
    await execFileP('ip', ['netns', 'del', `kiln-${id}`]).catch((err: unknown) => {
      const msg = (err as { stderr?: string }).stderr ?? '';
      if (!/No such file|not exist/i.test(msg)) throw err;
    });
  }

  private async lease(id: string): Promise<string> {
    const total = 256 * 256 - 3; // .0.2 .. .255.254
    const start = Math.floor(Math.random() * total);
    for (let n = 0; n < total; n++) {
      const k = ((start + n) % total) + 2;
      const ip = `${this.prefix}.${Math.floor(k / 256)}.${k % 256}`;
      if (k % 256 === 0 || k % 256 === 255) continue;
      const file = join(this.ipamDir, ip);
      for (let attempt = 0; attempt < 2; attempt++) {
        try {
          const fh = await open(file, 'wx');
          await fh.writeFile(`${process.pid} ${id}`);
          await fh.close();
          return ip;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
          const owner = Number((await readFile(file, 'utf8').catch(() => '')).trim().split(' ')[0]);
          // a lease whose process is gone is taken over (once); a fresh one may not be written yet
          if (!(Number.isInteger(owner) && owner > 0 && !pidAlive(owner))) break;
          await unlink(file).catch(() => undefined);
        }
      }
    }
    throw new RuntimeError(RuntimeErrorCode.Io, `no free address on bridge ${this.name}`);
  }

  private async unlease(ip: string): Promise<void> {
    await unlink(join(this.ipamDir, ip)).catch((err: unknown) => {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    });
  }
}

/**
 * Deletes the namespace (its veth goes with it) and the lease of each address in `dir` whose
 * owner process is gone.
 */
async function sweepLeaseDir(dir: string): Promise<void> {
  for (const ip of await readdir(dir)) {
    const file = join(dir, ip);
    const [pid, id] = (await readFile(file, 'utf8').catch(() => '')).trim().split(' ');
    const owner = Number(pid);
    if (!Number.isInteger(owner) || owner <= 0 || pidAlive(owner)) continue;
    if (id !== undefined && id !== '') await BridgeNetwork.detach(id).catch(() => undefined);
    await unlink(file).catch(() => undefined);
  }
}

/**
 * The IPv4 addresses and CIDRs of `deny` (host names resolved; IPv6 and loopback dropped: the
 * bridge is IPv4 and loopback is never forwarded).
 */
async function resolveDeny(deny: readonly string[]): Promise<string[]> {
  const out = new Set<string>();
  for (const d of deny) {
    const [addr, bits] = d.split('/');
    if (addr === undefined || addr === '') continue;
    let ips: string[];
    if (isIP(addr) === 4) ips = [addr];
    else if (isIP(addr) === 6) continue;
    else {
      try {
        ips = (await lookup(addr, { all: true, family: 4 })).map((a) => a.address);
      } catch (err) {
        throw new Error(`sandbox deny ${d}: cannot resolve ${addr}: ${(err as Error).message}`, {
          cause: err,
        });
      }
    }
    for (const ip of ips) {
      if (ip.startsWith('127.')) continue;
      out.add(bits === undefined ? `${ip}/32` : `${ip}/${bits}`);
    }
  }
  return [...out];
}
