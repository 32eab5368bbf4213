/** Helpers for extended-attribute tests: the attr tools (setfattr, getfattr) used directly. */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

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

/** A tree's attributes (`readTreeXattrs` of @kiln/layers) as plain data (hex values) for deep equality. */
export function hexXattrs(
  tree: Iterable<[string, Iterable<[string, Buffer]>]>,
): Record<string, Record<string, string>> {
  const out: Record<string, Record<string, string>> = {};
  for (const [p, x] of tree) {
    out[p] = Object.fromEntries([...x].map(([n, v]) => [n, v.toString('hex')]));
  }
  return out;
}
