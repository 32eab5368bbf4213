// The service entry as a process: bundled from source (`bundleEntries`, as the dispatch suites
// bundle the worker CLI), configured through the environment, serving the control API, stopping on SIGTERM.
import { KilnClient } from '@kiln/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnManaged } from '@kiln/common';
import { bundleEntries, makeTempDir, startNats, waitFor } from '@kiln/testing';
import type { NatsServerHandle } from '@kiln/testing';

let nats: NatsServerHandle;
let tmp: { dir: string; remove: () => void };
let entry: string;

beforeAll(async () => {
  tmp = makeTempDir('scheduler-main');
  nats = await startNats();
  entry = (await bundleEntries({ 'kiln-scheduler': 'services/scheduler/src/main.ts' }, tmp.dir))[
    'kiln-scheduler'
  ]!;
});

afterAll(async () => {
  await nats?.stop();
  tmp?.remove();
});

describe('scheduler main', () => {
  it('serves the control API with config from the environment and stops on SIGTERM', async () => {
    const lines: Record<string, unknown>[] = [];
    const proc = spawnManaged(process.execPath, [entry, '--log-level', 'info'], {
      name: 'scheduler',
      env: {
        ...process.env,
        KILN_NATS_URL: nats.url,
        KILN_SCHEDULER_LISTEN: '127.0.0.1:0',
      },
      onLine: (line, stream) => {
        if (stream === 'stdout' && line.startsWith('{'))
          lines.push(JSON.parse(line) as Record<string, unknown>);
      },
    });
    const listening = await waitFor('the scheduler to listen', () => {
      if (proc.hasExited()) throw new Error(`scheduler exited:\n${proc.output()}`);
      return lines.find((l) => l.msg === 'control api listening');
    });
    expect(listening.component).toBe('control');
    const client = await KilnClient.connect(`127.0.0.1:${String(listening.port)}`);
    try {
      expect(await client.listWorkers()).toEqual([]);
    } finally {
      client.close();
    }
    proc.kill('SIGTERM');
    expect((await proc.exited).code).toBe(0);
  });
});
