// The client path loads no service: `kiln build --addr` (the CLI's bundle) must not contain the
// scheduler's, the worker's or the store collector's code. The bundle is made here from source as
// scripts/bundle-cli.mjs makes it from dist (same entry, same esbuild), and its inputs are read
// from esbuild's metafile; nor grpc-js (loading it was a sixth of a cached build's CPU). The local farm daemon, which runs the services, is a separate entry.
import { join } from 'node:path';
import { build } from 'esbuild';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from '@kiln/testing';

describe('the CLI bundle', () => {
  it('holds no scheduler, worker or cache-store module', async () => {
    const out = await build({
      entryPoints: [join(REPO_ROOT, 'cli/src/main.ts')],
      bundle: true,
      platform: 'node',
      format: 'cjs',
      target: 'node20',
      // As scripts/bundle-cli.mjs: the OpenTelemetry SDK loads from node_modules when enabled.
      external: ['@opentelemetry/sdk-node'],
      conditions: ['kiln-source'],
      write: false,
      metafile: true,
      logLevel: 'silent',
    });
    const inputs = Object.keys(out.metafile.inputs);
    expect(inputs.some((p) => p.includes('cli/src/commands/build'))).toBe(true);
    expect(inputs.filter((p) => /(^|\/)services\//.test(p))).toEqual([]);
    // The farm's own code (it imports the services) stays out of the client too.
    expect(inputs.filter((p) => p.includes('cli/src/farm/services'))).toEqual([]);
    // The client speaks gRPC on node:http2 (libs/client grpc-h2.ts): grpc-js is the servers'.
    expect(inputs.filter((p) => p.includes('@grpc/grpc-js'))).toEqual([]);
  });
});
