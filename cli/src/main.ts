import { SpanStatusCode, trace } from '@opentelemetry/api';
import { createRequire } from 'node:module';
import { Command, CommanderError } from 'commander';
import { startTracing } from '@kiln/ops';
import type * as OtelSdk from '@opentelemetry/sdk-node';
import { KilnError } from '@kiln/protocol/errors';
import { registerBuild } from './commands/build.js';
import { registerDebug } from './commands/debug.js';
import { registerDu } from './commands/du.js';
import { registerLs } from './commands/ls.js';
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
  registerLs(p);
  registerDu(p);
  registerPrune(p);
  registerDebug(p);
  return p;
}

/** Runs the CLI and returns the exit code. Errors are printed as one clear message, never a stack. */
export async function main(argv: string[]): Promise<number> {
  // With OTEL_EXPORTER_OTLP_ENDPOINT set, the command's span is the root of the build's trace:
  // the scheduler's and the workers' spans hang under it (gRPC metadata, NATS headers).
  // The SDK through require: the bundle runs in a vm.Script, where import() is not available.
  const tracing = await startTracing('kiln', process.env, () =>
    Promise.resolve(createRequire(import.meta.url)('@opentelemetry/sdk-node') as typeof OtelSdk),
  );
  try {
    if (!tracing.enabled) await program().parseAsync(argv);
    else await traced(argv);
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode;
    if (err instanceof ExitStatus) return err.code;
    process.stderr.write(`${describe(err)}\n`);
    if (process.env.KILN_DEBUG && err instanceof Error && err.stack)
      process.stderr.write(`${err.stack}\n`);
    return 1;
  } finally {
    await tracing.shutdown();
  }
}

/** The command under one span, `kiln <command>`, ended with the command's outcome. */
function traced(argv: string[]): Promise<void> {
  const command = argv.slice(2).find((a) => !a.startsWith('-')) ?? '';
  return trace
    .getTracer('kiln')
    .startActiveSpan(
      `kiln ${command}`.trim(),
      { attributes: { 'kiln.command': command } },
      async (span) => {
        try {
          await program().parseAsync(argv);
        } catch (err) {
          if (!(err instanceof CommanderError && err.exitCode === 0))
            span.setStatus({ code: SpanStatusCode.ERROR, message: String(err) });
          throw err;
        } finally {
          span.end();
        }
      },
    );
}

function describe(err: unknown): string {
  if (err instanceof FormattedError) return err.message;
  if (err instanceof KilnError) return `error: ${err.message} [${err.code}]`;
  if (err instanceof Error) return `error: ${err.message}`;
  return `error: ${String(err)}`;
}

export { leaveWarmClient, serveWarmClient } from './warm-client.js';

/**
 * Runs what a `kiln build` would load and build first, with no effect outside this process: a
 * warm client (./warm-client.ts) does it while it waits, so its command starts on code that ran.
 */
export async function preloadBuild(): Promise<void> {
  program();
  await Promise.all([
    import('./commands/build-run.js'),
    import('./commands/farm-client.js'),
    import('./farm/local.js'),
    import('./farm/idle.js'),
    import('./image-ids.js'),
  ]);
}
