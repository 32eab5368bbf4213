import { execFile, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { access, constants, writeFile } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { RuntimeError, RuntimeErrorCode } from './errors.js';

const execFileP = promisify(execFile);

/** Where `ip netns` keeps namespaces: a tmpfs of the worker's own mount namespace here. */
const NETNS_DIR = '/run/netns';
/** slirp4netns's network (`--configure`): the router is .100, the host's loopback .2, DNS .3. */
export const SLIRP_SUBNET = '10.0.2.0/24';

/**
 * The way out for the sandbox network of a worker in a user namespace (rootless, or
 * `--userns-remap`), which may not make links or firewall rules in the host's network namespace:
 * a network namespace of its own (the "router", `kiln-router`), owned by the worker's user
 * namespace, where it makes its bridge and rules as a root worker does on the host; the
 * router's default route is a tap device of slirp4netns, a user-mode TCP/IP stack that runs in
 * the host's namespace and turns what leaves the router into the worker's own sockets (as
 * rootlesskit does for BuildKit's rootless mode). slirp4netns runs with `--disable-host-loopback`
 * (its 10.0.2.2, the host's 127.0.0.1, is refused); the host's other addresses are the bridge's
 * to refuse (see {@link hostAddresses}).
 *
 * The namespaces are files on a tmpfs mounted on /run/netns in the worker's mount namespace
 * (private to it): they go with the worker, whatever way it ends. slirp4netns exits when the
 * worker does (its `--exit-fd` is a pipe the worker holds).
 */
export class SlirpRouter {
  readonly netns = 'kiln-router';

  private constructor(private readonly child: ChildProcess) {}

  /** Makes the router namespace and starts slirp4netns on it; typed error when it cannot. */
  static async start(): Promise<SlirpRouter> {
    const fail = (why: string, cause?: unknown): RuntimeError =>
      new RuntimeError(RuntimeErrorCode.Io, `slirp4netns network: ${why}`, { cause });
    if (!(await writable(NETNS_DIR))) {
      try {
        await execFileP('mount', [
          '-t',
          'tmpfs',
          '-o',
          'mode=0755,size=1m',
          'kiln-netns',
          NETNS_DIR,
        ]);
      } catch (err) {
        throw fail(`cannot mount a tmpfs on ${NETNS_DIR}: ${stderrOf(err)}`, err);
      }
    }
    const path = `${NETNS_DIR}/kiln-router`;
    await execFileP('ip', ['netns', 'del', 'kiln-router']).catch(() => undefined);
    try {
      await writeFile(path, '');
      await execFileP('unshare', [`--net=${path}`, 'true']);
    } catch (err) {
      throw fail(`cannot make the router namespace: ${stderrOf(err)}`, err);
    }
    // fd 3: slirp4netns writes "1" when the tap is up and configured; fd 4: it exits when the
    // worker's end closes (the worker exited, or close()).
    const child = spawn(
      'slirp4netns',
      [
        ...['--configure', '--mtu=65520', '--disable-host-loopback'],
        ...['--ready-fd=3', '--exit-fd=4', '--netns-type=path', path, 'tap0'],
      ],
      { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'] },
    );
    let stderr = '';
    child.stderr?.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-2000)));
    try {
      await new Promise<void>((resolve, reject) => {
        child.once('error', reject);
        child.once('exit', (code) => reject(new Error(`exited with ${code}: ${stderr.trim()}`)));
        (child.stdio[3] as Readable).once('data', () => resolve());
      });
    } catch (err) {
      child.kill('SIGKILL');
      await execFileP('ip', ['netns', 'del', 'kiln-router']).catch(() => undefined);
      const missing = (err as NodeJS.ErrnoException).code === 'ENOENT';
      throw fail(
        missing
          ? 'slirp4netns is not installed (Debian: apt-get install slirp4netns)'
          : (err as Error).message,
        err,
      );
    }
    child.removeAllListeners('exit');
    return new SlirpRouter(child);
  }

  /** Stops slirp4netns and deletes the router namespace. */
  async close(): Promise<void> {
    if (this.child.exitCode === null) {
      const exited = new Promise((resolve) => this.child.once('exit', resolve));
      this.child.kill('SIGTERM');
      await exited;
    }
    await execFileP('ip', ['netns', 'del', this.netns]).catch(() => undefined);
  }
}

/**
 * The IPv4 addresses of this process's network namespace (the host's: a worker in a user
 * namespace keeps the host's network), loopback excepted: what slirp4netns would connect to
 * on the host's own services, refused to RUNs.
 */
export async function hostAddresses(): Promise<string[]> {
  const { stdout } = await execFileP('ip', ['-4', '-o', 'addr']);
  return stdout
    .split('\n')
    .map((l) => /inet (\d+\.\d+\.\d+\.\d+)/.exec(l)?.[1])
    .filter((a): a is string => a !== undefined && !a.startsWith('127.'));
}

async function writable(dir: string): Promise<boolean> {
  return access(dir, constants.W_OK).then(
    () => true,
    () => false,
  );
}

function stderrOf(err: unknown): string {
  return ((err as { stderr?: string }).stderr ?? '').trim() || (err as Error).message;
}
