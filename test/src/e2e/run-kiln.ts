/**
 * Runs the CLI in this process (`main` of @kiln/cli) with its standard output and error captured,
 * and optional environment variables set for the run (removed afterwards if they were unset).
 */
import { main } from '@kiln/cli';
import { vi } from 'vitest';

export async function runKiln(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; out: string }> {
  const out: string[] = [];
  const capture = (chunk: string | Uint8Array): boolean => {
    out.push(Buffer.from(chunk).toString());
    return true;
  };
  const added = Object.keys(env).filter((k) => !(k in process.env));
  Object.assign(process.env, env);
  const e = vi.spyOn(process.stderr, 'write').mockImplementation(capture);
  const o = vi.spyOn(process.stdout, 'write').mockImplementation(capture);
  try {
    const code = await main(['node', 'kiln', ...args]);
    return { code, out: out.join('') };
  } finally {
    e.mockRestore();
    o.mockRestore();
    for (const k of added) delete process.env[k];
  }
}
