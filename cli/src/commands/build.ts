/**
 * `kiln build`: builds a Dockerfile like `docker buildx build`, on a Kiln farm (`--addr`,
 * `KILN_ADDR`) or on the local farm (farm/local.ts). The implementation loads only when
 * the command runs, so other commands start fast.
 */
import type { Command } from 'commander';
import type { BuildFlags } from './build-run.js';

const collect = (v: string, prev: string[]): string[] => [...prev, v];

export function registerBuild(program: Command): void {
  program
    .command('build')
    .description('build an image from a Dockerfile and a context directory')
    .argument('<context>', 'the build context directory')
    // buildx takes exactly one context: a second word is a mistake, not something to ignore.
    .allowExcessArguments(false)
    .option('-f, --file <path>', 'the Dockerfile (default: <context>/Dockerfile)')
    .option('--target <stage>', 'build this stage')
    .option('--build-arg <k=v>', 'set a build argument (repeatable)', collect, [])
    .option('--platform <p[,p]>', 'target platform(s), e.g. linux/amd64,linux/arm64')
    .option(
      '--secret <id=X,src=FILE|env=VAR>',
      'expose a secret to RUN --mount=type=secret (repeatable)',
      collect,
      [],
    )
    .option(
      '--ssh <default[=SOCK]>',
      'forward an ssh agent to RUN --mount=type=ssh (repeatable)',
      collect,
      [],
    )
    .option('--no-cache', 'do not use the cache')
    .option(
      '--no-cache-filter <stage>',
      'do not use the cache for this stage (repeatable)',
      collect,
      [],
    )
    .option('--pull', 'always resolve base images again from their registry')
    .option('--label <k=v>', "set a label in the image's config (repeatable)", collect, [])
    .option(
      '--add-host <host:ip>',
      'add a host name to /etc/hosts of RUN steps (repeatable)',
      collect,
      [],
    )
    .option('--progress <auto|tty|plain|rawjson|quiet>', 'progress output', 'auto')
    .option('-q, --quiet', 'no progress; print the image id (or the pushed digest) on stdout')
    .option('--iidfile <file>', 'write the image id (config digest, else the image digest) here')
    .option(
      '--metadata-file <file>',
      "write the build's result as JSON here (containerimage.digest, containerimage.config.digest, image.name)",
    )
    .option('--push', 'push the image named by -t (short for -o type=registry)')
    .option(
      '--load',
      'load the image into the docker engine at $DOCKER_HOST or /var/run/docker.sock (short for -o type=docker)',
    )
    .option(
      '--network <mode>',
      'the network of RUN steps without their own --network: default, none, host (asks for network.host, which the farm must allow)',
    )
    .option('--shm-size <size>', 'the size of /dev/shm in RUN steps, e.g. 128m or 1g')
    .option(
      '--ulimit <type=soft[:hard]>',
      'an rlimit of RUN steps, e.g. nofile=1024:4096 (repeatable)',
      collect,
      [],
    )
    .option(
      '--build-context <name=value>',
      'a named context for a stage or image (repeatable): NAME=DIR | NAME=docker-image://REF | NAME=GIT_URL | NAME=https://URL',
      collect,
      [],
    )
    .option(
      '-o, --output <spec>',
      'where the result goes: type=local,dest=DIR | type=tar,dest=FILE | type=oci,dest=FILE | type=docker,dest=FILE | type=image,name=REF,push=true | type=registry,name=REF',
      collect,
      [],
    )
    .option(
      '--annotation <[type[,type]][[platform]]:key=value>',
      'an annotation of the image manifest (default) or index (several platforms), e.g. index:org.opencontainers.image.title=app (repeatable)',
      collect,
      [],
    )
    .option(
      '--attest <type=provenance|sbom[,...]>',
      "attach an attestation to the image: type=provenance[,mode=min|max] (SLSA provenance v0.2) or type=sbom (SPDX, from the image's dpkg/apk databases) (repeatable)",
      collect,
      [],
    )
    .option('--provenance <true|false|mode=min|max>', 'short for --attest type=provenance[,...]')
    .option('--sbom <true|false>', 'short for --attest type=sbom')
    .option('-t, --tag <name>', 'name the image (oci/docker outputs)', collect, [])
    .option(
      '--cache-from <spec>',
      'import a build cache (BuildKit format): type=local,src=DIR[,tag=T|digest=D] | type=registry,ref=REF (a cache or an image with an inline cache) | type=s3,bucket=B,region=R[,...] (repeatable)',
      collect,
      [],
    )
    .option(
      '--cache-to <spec>',
      'export the build cache (BuildKit format): type=local,dest=DIR | type=registry,ref=REF | type=inline | type=s3,bucket=B,region=R[,...]; mode=min|max (repeatable)',
      collect,
      [],
    )
    .option(
      '--insecure-registry <host>',
      'talk plain HTTP to this registry (loopback ones always are)',
      collect,
      [],
    )
    .option(
      '--allow <entitlement>',
      'allow an entitlement the build needs: security.insecure (RUN --security=insecure), network.host (RUN --network=host); the farm must allow it too (repeatable)',
      collect,
      [],
    )
    .option(
      '--addr <host:port[,host:port...]>',
      'build on the farm whose scheduler is here (default: $KILN_ADDR, else the local farm, started on first use); several schedulers of one farm are tried in turn, and a build whose scheduler goes away goes on through the next',
    )
    .option('--tls', "talk TLS to the farm's scheduler, verified with the system's CAs")
    .option('--tlscacert <file>', "CA certificate (PEM) to verify the farm's scheduler with TLS")
    .option('--tlscert <file>', 'client certificate (PEM) for a farm with mutual TLS')
    .option('--tlskey <file>', "the client certificate's key (PEM)")
    .option('--token <token>', "the farm's bearer token (default: $KILN_TOKEN)")
    .option(
      '--token-file <file>',
      'read the bearer token from this file (default: $KILN_TOKEN_FILE)',
    )
    .action(async (context: string, flags: BuildFlags) => {
      const { build } = await import('./build-run.js');
      await build(context, flags);
    });
}
