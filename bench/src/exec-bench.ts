import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { makeBusyboxRootfs } from '@kiln/testing';
import {
  OciRuntime,
  boundingCapabilities,
  generateSpec,
  hostsFile,
  resolvConf,
} from '@kiln/worker';
import type { RuntimeName } from '@kiln/worker';

export interface BenchExecResult {
  runtime: RuntimeName;
  iterations: number;
  /** Median ms from `OciRuntime.run({ args: ['true'] })` called to resolved. */
  oursMedianMs: number;
  /** Median ms from spawning `<runtime> run` of a prepared bundle (same config) to its exit. */
  rawMedianMs: number;
  /** oursMedianMs / rawMedianMs. */
  ratio: number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function runRaw(binary: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(binary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0 ? resolve() : reject(new Error(`${binary} exited ${code}: ${err}`)),
    );
  });
}

/**
 * Exec overhead: start to exit of `true` in a busybox rootfs through {@link OciRuntime} (bundle,
 * spec, user and hosts files, stub cleanup included) against a raw `<runtime> run` of a bundle with
 * the same config.json, alternating the two so that machine noise hits both. Needs root and the
 * machine setup (crun or runc, busybox-static). Returns medians in milliseconds.
 */
export async function benchExec(
  iterations: number,
  runtime: RuntimeName | 'auto' = 'auto',
): Promise<BenchExecResult> {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-bench-exec-'));
  try {
    const rootfs = await makeBusyboxRootfs(join(dir, 'rootfs'));
    const rt = await OciRuntime.open({ stateDir: join(dir, 'state'), runtime });
    const binary = rt.name;
    const stateRoot = join(dir, 'raw-state');

    const bundle = join(dir, 'raw-bundle');
    await mkdir(bundle);
    await writeFile(join(bundle, 'resolv.conf'), resolvConf('host'));
    await writeFile(join(bundle, 'hosts'), hostsFile('buildkitsandbox'));
    const spec = generateSpec({
      id: 'raw',
      rootfs,
      readonlyRootfs: false,
      args: ['true'],
      env: [],
      cwd: '/',
      user: { uid: 0, gid: 0, additionalGids: [], home: '/root' },
      hostname: undefined,
      network: 'host',
      security: 'sandbox',
      ulimits: [],
      cgroupsPath: undefined,
      resolvConf: join(bundle, 'resolv.conf'),
      hosts: join(bundle, 'hosts'),
      mounts: [],
      hostCapabilities: await boundingCapabilities(),
    });
    await writeFile(join(bundle, 'config.json'), JSON.stringify(spec));
    // crun/runc leave the empty /etc/hosts and /etc/resolv.conf mount targets: make them exist so
    // that both sides run on the same tree.
    await writeFile(join(rootfs, 'etc', 'hosts'), '');
    await writeFile(join(rootfs, 'etc', 'resolv.conf'), '');

    // warm up both paths
    await rt.run({ rootfs, args: ['true'], network: 'host' });
    await runRaw(binary, [
      '--root',
      stateRoot,
      'run',
      '--bundle',
      bundle,
      `kiln-raw-${randomBytes(6).toString('hex')}`,
    ]);

    const ours: number[] = [];
    const raw: number[] = [];
    for (let i = 0; i < iterations; i++) {
      let t = performance.now();
      await rt.run({ rootfs, args: ['true'], network: 'host' });
      ours.push(performance.now() - t);
      const id = `kiln-raw-${randomBytes(6).toString('hex')}`;
      t = performance.now();
      await runRaw(binary, ['--root', stateRoot, 'run', '--bundle', bundle, id]);
      raw.push(performance.now() - t);
    }
    const oursMedianMs = median(ours);
    const rawMedianMs = median(raw);
    return {
      runtime: rt.name,
      iterations,
      oursMedianMs,
      rawMedianMs,
      ratio: oursMedianMs / rawMedianMs,
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
