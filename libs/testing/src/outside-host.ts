/**
 * "The outside" for sandbox network tests, on a machine without internet: a host in a network
 * namespace of its own, reached from this one through a veth pair and routed like any other
 * network, with two addresses (one to allow, one to deny as a farm's control plane would be) and
 * an http server on port 8080 of both. Needs root (iproute2).
 */
import { execFile, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { waitFor } from './util.js';

const execFileP = promisify(execFile);

export interface OutsideHost {
  /** An address of the outside host that RUNs may reach. */
  allowed: string;
  /** Its other address, for a test to deny. */
  denied: string;
  /** The address of this host on the link to it (one of the host's own addresses). */
  hostSide: string;
  /** What its server answers (`GET /` on port 8080). */
  readonly answer: string;
  stop(): Promise<void>;
}

export async function startOutsideHost(): Promise<OutsideHost> {
  const n = process.pid % 250;
  const ns = `kiln-test-out-${process.pid}`;
  const veth = `vto${process.pid}`;
  const [hostSide, allowed, denied] = [`10.201.${n}.1`, `10.201.${n}.2`, `10.201.${n}.3`];
  const answer = 'hello from outside\n';
  const ip = (...args: string[]) => execFileP('ip', args);
  let server: ChildProcess | undefined;
  const stop = async (): Promise<void> => {
    server?.kill();
    await ip('netns', 'del', ns).catch(() => undefined);
    await ip('link', 'del', veth).catch(() => undefined);
  };
  try {
    await ip('netns', 'add', ns);
    await ip('link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
    await ip('addr', 'add', `${hostSide}/24`, 'dev', veth);
    await ip('link', 'set', veth, 'up');
    for (const a of [allowed, denied]) await ip('-n', ns, 'addr', 'add', `${a}/24`, 'dev', 'eth0');
    await ip('-n', ns, 'link', 'set', 'eth0', 'up');
    server = spawn(
      'ip',
      [
        ...['netns', 'exec', ns, process.execPath, '-e'],
        `require('http').createServer((q, r) => r.end(${JSON.stringify(answer)})).listen(8080)`,
      ],
      { stdio: 'ignore' },
    );
    await waitFor('the outside server', () =>
      fetch(`http://${allowed}:8080/`).then(
        (r) => r.ok,
        () => false,
      ),
    );
  } catch (err) {
    await stop();
    throw err;
  }
  return { allowed, denied, hostSide, answer, stop };
}
