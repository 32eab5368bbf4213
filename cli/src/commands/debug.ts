import type { Command } from 'commander';
import { KilnError } from '@kiln/protocol/errors';
import { FormattedError } from '../formatted-error.js';
import { readInput, writeStdout } from '../io.js';

/** `kiln debug ...`: tools to look inside LLB and Dockerfiles (BuildKit's `buildctl debug`). Libraries load on use. */
export function registerDebug(program: Command): void {
  const debug = program.command('debug').description('inspect LLB definitions and Dockerfiles');

  debug
    .command('dump-llb')
    .argument('[file]', 'a marshaled Definition; - or nothing reads standard input')
    .description('print one JSON object per op: digest, op (as BuildKit prints it), metadata')
    .action(async (file?: string) => {
      const { dumpLlb } = await import('@kiln/llb');
      await writeStdout(dumpLlb(await readInput(file)));
    });

  debug
    .command('marshal-llb')
    .argument('[file]', 'dump-llb output (JSON lines); - or nothing reads standard input')
    .description('marshal dump-llb JSON lines back into a Definition, written to standard output')
    .action(async (file?: string) => {
      const { marshalLlb } = await import('@kiln/llb');
      const bytes = marshalLlb((await readInput(file)).toString('utf8'));
      if (process.stdout.isTTY)
        throw new KilnError(
          'OUTPUT_IS_TTY',
          'refusing to write binary to a terminal; redirect to a file',
        );
      await writeStdout(bytes);
    });

  debug
    .command('dump-ast')
    .argument('[file]', 'a Dockerfile; - or nothing reads standard input')
    .description("print a Dockerfile's parse tree in BuildKit's AST dump format")
    .action(async (file?: string) => {
      const { DockerfileError, dumpAst, formatDockerfileError } = await import('@kiln/dockerfile');
      const text = (await readInput(file)).toString('utf8');
      let out: string;
      try {
        out = dumpAst(text);
      } catch (err) {
        if (err instanceof DockerfileError) {
          throw new FormattedError(
            formatDockerfileError(err, text, file && file !== '-' ? file : 'Dockerfile'),
            err,
          );
        }
        throw err;
      }
      await writeStdout(out.endsWith('\n') || out === '' ? out : `${out}\n`);
    });

  debug
    .command('example-llb')
    .option('--platform <platform>', 'target platform', 'linux/amd64')
    .option('--image <ref>', 'base image', 'busybox:latest')
    .description('write an example Definition (a two-stage build) to standard output')
    .action(async (opts: { platform: string; image: string }) => {
      const { copy, image, local, marshal, mkdir, parsePlatform } = await import('@kiln/llb');
      const platform = parsePlatform(opts.platform);
      const ctx = local('context', { excludePatterns: ['.git'] });
      const build = image(opts.image, { platform })
        .run({
          args: ['sh', '-c', 'cp -r /src /out && echo built > /out/status'],
          mounts: [{ target: '/src', source: ctx, readonly: true }],
        })
        .root();
      const final = image(opts.image, { platform })
        .file(mkdir('/app', 0o755).copy(build, '/out', '/app/', { copyDirContentsOnly: true }))
        .run({ shlex: 'ls -la /app', customName: 'list the result' })
        .root()
        .file(copy(ctx, '/README.md', '/app/README.md', { allowEmptyWildcard: true }));
      const def = marshal(final, { platform, localUniqueId: 'example' });
      if (process.stdout.isTTY)
        throw new KilnError(
          'OUTPUT_IS_TTY',
          'refusing to write binary to a terminal; pipe it to `kiln debug dump-llb`',
        );
      await writeStdout(def.toBytes());
    });
}
