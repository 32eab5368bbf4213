import { readFile } from 'node:fs/promises';
import { KilnError } from '@kiln/protocol/errors';

/** Reads FILE, or standard input for `-` or no argument. */
export async function readInput(file: string | undefined): Promise<Buffer> {
  if (file === undefined || file === '-') {
    const chunks: Buffer[] = [];
    for await (const c of process.stdin) chunks.push(c as Buffer);
    return Buffer.concat(chunks);
  }
  try {
    return await readFile(file);
  } catch (cause) {
    throw new KilnError(
      'INPUT_NOT_FOUND',
      `cannot read ${file}: ${(cause as NodeJS.ErrnoException).code ?? String(cause)}`,
      {
        cause,
      },
    );
  }
}

/** Writes to stdout and resolves once the data is flushed (or the reader went away). */
export function writeStdout(data: string | Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => {
    process.stdout.write(data, (err) => {
      if (err && (err as NodeJS.ErrnoException).code !== 'EPIPE') reject(err);
      else resolve();
    });
  });
}
