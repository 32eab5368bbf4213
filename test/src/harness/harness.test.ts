// Proves that the services of the global setup really work, and that the fixture is reproducible.

import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { access, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AckPolicy, RetentionPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { Client as MinioClient } from 'minio';
import { describe, expect, inject, it } from 'vitest';
import { testEnv } from './env.js';
import { MEDIA_TYPES, buildBusyboxFixture, sha256Digest } from './fixtures.js';
import { makeTempDir, startNats, waitFor } from '@kiln/testing';
import { GUARD_SCRIPT, spawnManaged } from '@kiln/common';

const env = testEnv();

describe('test environment', () => {
  it('is exposed through process.env and inject() alike', () => {
    expect(inject('KILN_TEST_NATS_URL')).toBe(env.KILN_TEST_NATS_URL);
    expect(inject('KILN_TEST_FIXTURE_IMAGE')).toBe(env.KILN_TEST_FIXTURE_IMAGE);
    expect(inject('KILN_TEST_S3_BUCKET')).toBe('kiln-test');
    expect(env.KILN_TEST_NATS_URL).toMatch(/^nats:\/\/127\.0\.0\.1:\d+$/);
    expect(env.KILN_TEST_REGISTRY).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(env.KILN_TEST_FIXTURE_IMAGE).toBe(`${env.KILN_TEST_REGISTRY}/busybox:latest`);
    expect(env.KILN_TEST_S3_ENDPOINT).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
  });
});

describe('nats-server (JetStream)', () => {
  it('creates a stream, publishes, and a durable pull consumer consumes and acks', async () => {
    const nc = await connect({ servers: env.KILN_TEST_NATS_URL });
    try {
      const jsm = await jetstreamManager(nc);
      const stream = `HARNESS_${process.pid}`;
      await jsm.streams.add({
        name: stream,
        subjects: [`harness.${process.pid}.>`],
        retention: RetentionPolicy.Workqueue,
      });
      await jsm.consumers.add(stream, {
        durable_name: 'w',
        ack_policy: AckPolicy.Explicit,
        filter_subject: `harness.${process.pid}.linux.amd64.>`,
      });
      const js = jetstream(nc);
      const n = 20;
      for (let i = 0; i < n; i++) {
        const ack = await js.publish(`harness.${process.pid}.linux.amd64.t${i}`, `task ${i}`);
        expect(ack.seq).toBe(i + 1);
      }
      const consumer = await js.consumers.get(stream, 'w');
      const seen: string[] = [];
      const messages = await consumer.consume({ max_messages: 8 });
      for await (const m of messages) {
        m.working();
        seen.push(m.string());
        m.ack();
        if (seen.length === n) break;
      }
      expect(seen).toEqual(Array.from({ length: n }, (_, i) => `task ${i}`));
      // Work-queue retention: acked messages are removed.
      await waitFor(
        'acked messages to leave the work queue',
        async () => (await jsm.streams.info(stream)).state.messages === 0,
      );
      await jsm.streams.delete(stream);
    } finally {
      await nc.close();
    }
  });

  it('a harness-started server stops cleanly and removes its temp dir', async () => {
    const nats = await startNats();
    const nc = await connect({ servers: nats.url });
    await nc.flush();
    await nc.close();
    await nats.stop();
    expect(nats.process.hasExited()).toBe(true);
    await expect(access(nats.storeDir)).rejects.toThrow();
  });
});

describe('s3rver', () => {
  const client = () => {
    const u = new URL(env.KILN_TEST_S3_ENDPOINT);
    return new MinioClient({
      endPoint: u.hostname,
      port: Number(u.port),
      useSSL: false,
      accessKey: env.KILN_TEST_S3_ACCESS_KEY,
      secretKey: env.KILN_TEST_S3_SECRET_KEY,
      region: 'us-east-1',
    });
  };

  it('has the bucket and supports put, get, stat, delete', async () => {
    const s3 = client();
    const bucket = env.KILN_TEST_S3_BUCKET;
    expect(await s3.bucketExists(bucket)).toBe(true);
    const key = `harness/${process.pid}/hello.txt`;
    const body = Buffer.from('hello, kiln\n'.repeat(1000));
    await s3.putObject(bucket, key, body, body.length, { 'Content-Type': 'text/plain' });
    const stat = await s3.statObject(bucket, key);
    expect(stat.size).toBe(body.length);
    const chunks: Buffer[] = [];
    for await (const c of await s3.getObject(bucket, key)) chunks.push(c as Buffer);
    expect(Buffer.concat(chunks).equals(body)).toBe(true);
    await s3.removeObject(bucket, key);
    await expect(s3.statObject(bucket, key)).rejects.toMatchObject({ code: 'NotFound' });
  });
});

describe('docker-registry with the busybox fixture', () => {
  const base = `http://${env.KILN_TEST_REGISTRY}`;
  const accept = [
    MEDIA_TYPES.ociIndex,
    MEDIA_TYPES.ociManifest,
    MEDIA_TYPES.dockerManifestList,
    MEDIA_TYPES.dockerManifest,
  ].join(', ');

  const getJson = async (
    path: string,
  ): Promise<{ body: Buffer; json: Record<string, unknown>; type: string | null }> => {
    const res = await fetch(`${base}${path}`, { headers: { accept } });
    expect(res.status, path).toBe(200);
    const body = Buffer.from(await res.arrayBuffer());
    return {
      body,
      json: JSON.parse(body.toString('utf8')) as Record<string, unknown>,
      type: res.headers.get('content-type'),
    };
  };

  it('serves busybox:latest as an OCI index of linux/amd64 and linux/arm64 with verifiable blobs', async () => {
    const index = await getJson('/v2/busybox/manifests/latest');
    expect(index.type).toBe(MEDIA_TYPES.ociIndex);
    const manifests = index.json.manifests as {
      digest: string;
      mediaType: string;
      platform: { os: string; architecture: string };
    }[];
    expect(manifests.map((m) => `${m.platform.os}/${m.platform.architecture}`).sort()).toEqual([
      'linux/amd64',
      'linux/arm64',
    ]);

    for (const desc of manifests) {
      const m = await getJson(`/v2/busybox/manifests/${desc.digest}`);
      expect(sha256Digest(m.body)).toBe(desc.digest);
      expect(m.type).toBe(MEDIA_TYPES.ociManifest);
      const manifest = m.json as {
        config: { digest: string };
        layers: { digest: string; size: number }[];
      };

      const cfgRes = await fetch(`${base}/v2/busybox/blobs/${manifest.config.digest}`);
      const cfgBody = Buffer.from(await cfgRes.arrayBuffer());
      expect(sha256Digest(cfgBody)).toBe(manifest.config.digest);
      const cfg = JSON.parse(cfgBody.toString('utf8')) as {
        architecture: string;
        os: string;
        config: { Cmd: string[] };
      };
      expect(cfg.architecture).toBe(desc.platform.architecture);
      expect(cfg.os).toBe('linux');
      expect(cfg.config.Cmd).toEqual(['sh']);

      expect(manifest.layers).toHaveLength(1);
      for (const layer of manifest.layers) {
        const res = await fetch(`${base}/v2/busybox/blobs/${layer.digest}`);
        expect(res.status).toBe(200);
        const blob = Buffer.from(await res.arrayBuffer());
        expect(blob.length).toBe(layer.size);
        expect(`sha256:${createHash('sha256').update(blob).digest('hex')}`).toBe(layer.digest);
      }
    }
  });
});

describe('fixture builder', () => {
  it('is reproducible: two builds give the same index digest and identical layouts', async () => {
    const a = makeTempDir('fixture-a');
    const b = makeTempDir('fixture-b');
    try {
      const da = await buildBusyboxFixture(join(a.dir, 'oci'));
      const db = await buildBusyboxFixture(join(b.dir, 'oci'));
      expect(da).toMatch(/^sha256:[0-9a-f]{64}$/);
      expect(db).toBe(da);
      const ia = await readFile(join(a.dir, 'oci', 'index.json'));
      const ib = await readFile(join(b.dir, 'oci', 'index.json'));
      expect(ia.equals(ib)).toBe(true);
    } finally {
      a.remove();
      b.remove();
    }
  });
});

describe('managed processes', () => {
  it('stop() ends the real process, not only the guard', async () => {
    const p = spawnManaged('/bin/sh', ['-c', 'echo started; exec sleep 600'], { name: 'sleeper' });
    await waitFor('the sleeper to start', () => p.output().includes('started'));
    const info = await p.stop();
    expect(p.hasExited()).toBe(true);
    // The guard exits only after the process it waits for has ended (killed by SIGTERM: 143).
    expect(info.code).toBe(143);
  });

  it('the real process dies when its parent is SIGKILLed (no exit handler runs)', async () => {
    // A throwaway Node parent starts `sleep 600` under the guard, prints the guard's pid, and is then
    // killed with SIGKILL: the guard's stdin pipe reaches EOF and the guard must kill the sleeper.
    const parentCode = [
      "const { spawn } = require('node:child_process');",
      "const g = spawn('/bin/sh', ['-c', process.argv[1], 'kiln-guard', 'sleep', '600'],",
      "  { stdio: ['pipe', 'ignore', 'ignore'], detached: true });",
      'console.log(g.pid);',
      'setInterval(() => {}, 1000);',
    ].join('\n');
    const parent = spawn(process.execPath, ['-e', parentCode, GUARD_SCRIPT], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    parent.stdout.on('data', (d: Buffer) => (out += d.toString()));
    try {
      const guardPid = await waitFor('the guard pid', () =>
        /^(\d+)\n/.exec(out) ? Number(/^(\d+)/.exec(out)?.[1]) : undefined,
      );
      const sleeperPid = await waitFor(
        'the sleeper',
        () => childrenOf(guardPid).find((c) => c.comm === 'sleep')?.pid,
      );
      parent.kill('SIGKILL');
      await waitFor('the sleeper to be gone', () => !isAlive(sleeperPid), { timeoutMs: 20_000 });
    } finally {
      parent.kill('SIGKILL');
    }
  });
});

function childrenOf(ppid: number): { pid: number; comm: string }[] {
  const result: { pid: number; comm: string }[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      // pid (comm) state ppid ...
      const close = stat.lastIndexOf(')');
      const comm = stat.slice(stat.indexOf('(') + 1, close);
      const fields = stat.slice(close + 2).split(' ');
      if (Number(fields[1]) === ppid) result.push({ pid: Number(name), comm });
    } catch {
      // the process went away while we looked
    }
  }
  return result;
}

function isAlive(pid: number): boolean {
  try {
    // A zombie is not alive for our purpose.
    return !/^\S+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}
