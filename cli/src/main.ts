import { Command, CommanderError } from 'commander';
import { KilnError } from '@kiln/protocol/errors';
import { registerBuild } from './commands/build.js';
import { registerDebug } from './commands/debug.js';
import { registerDu } from './commands/du.js';
import { registerPrune } from './commands/prune.js';
import { registerFarm } from './commands/farm.js';
import { ExitStatus, FormattedError } from './formatted-error.js';

/** Builds the command tree; exported for tests. */
export function program(): Command {
  const p = new Command('kiln')
    .description('Kiln: BuildKit for a cluster. Build container images from Dockerfiles and LLB.')
    .version('0.1.0')
    .showHelpAfterError()
    .exitOverride();
  registerBuild(p);
  registerFarm(p);
  registerDu(p);
  registerPrune(p);
  registerDebug(p);
  return p;
}

/** Runs the CLI and returns the exit code. Errors are printed as one clear message, never a stack. */
export async function main(argv: string[]): Promise<number> {
  try {
    await program().parseAsync(argv);
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode;
    if (err instanceof ExitStatus) return err.code;
    process.stderr.write(`${describe(err)}\n`);
    if (process.env.KILN_DEBUG && err instanceof Error && err.stack)
      process.stderr.write(`${err.stack}\n`);
    return 1;
  }
}

function describe(err: unknown): string {
  if (err instanceof FormattedError) return err.message;
  if (err instanceof KilnError) return `error: ${err.message} [${err.code}]`;
  if (err instanceof Error) return `error: ${err.message}`;
  return `error: ${String(err)}`;
}
