/** Helpers shared by the extended-attribute tests (fs and layers): the attr tools used directly. */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { readTreeXattrs } from '../xattr.js';

const exec = promisify(execFile);

/** setcap-style v2 capability bytes (cap_net_bind_service+ep): not UTF-8 text. */
export const CAPABILITY = Buffer.from('0100000200040000000000000000000000000000', 'hex');

/** Sets one attribute with setfattr (on a symlink itself, not its target). */
export async function setx(path: string, name: string, value: Buffer): Promise<void> {
  await exec('setfattr', ['-h', '-n', name, '-v', `0x${value.toString('hex')}`, path]);
}

/** One attribute's raw value as getfattr prints it (`--only-values`), or undefined. */
export async function getx(path: string, name: string): Promise<Buffer | undefined> {
  try {
    const { stdout } = await exec('getfattr', ['-h', '--only-values', '-n', name, path], {
      encoding: 'buffer',
    });
    return stdout;
  } catch {
    return undefined;
  }
}

/** Every attribute below `root`, as plain data (hex values) for deep equality. */
export async function dumpXattrs(root: string): Promise<Record<string, Record<string, string>>> {
  const out: Record<string, Record<string, string>> = {};
  for (const [p, x] of await readTreeXattrs(root)) {
    out[p] = Object.fromEntries([...x].map(([n, v]) => [n, v.toString('hex')]));
  }
  return out;
}
