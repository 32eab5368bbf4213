import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { freePort, waitFor } from '@kiln/testing';
import { describe, expect, it } from 'vitest';
import { blobStoreConformance } from './test-support/blob-store.conformance.js';
import { sha256Digest } from './digest.js';
import { StoreConfigError, StoreUnavailableError } from './errors.js';
import { S3BlobStore } from './s3-blob-store.js';

/**
 * Runs against the real s3rver the test harness starts. Missing configuration is a failure, not a
 * skip: a green run must mean the S3 backend was exercised.
 */
function s3Config(): { endpoint: string; accessKey: string; secretKey: string; bucket: string } {
  const env = process.env;
  const endpoint = env.KILN_TEST_S3_ENDPOINT;
  const accessKey = env.KILN_TEST_S3_ACCESS_KEY;
  const secretKey = env.KILN_TEST_S3_SECRET_KEY;
  const bucket = env.KILN_TEST_S3_BUCKET;
  if (!endpoint || !accessKey || !secretKey || !bucket) {
    throw new Error(
      'S3 conformance needs KILN_TEST_S3_ENDPOINT, KILN_TEST_S3_ACCESS_KEY, KILN_TEST_S3_SECRET_KEY and KILN_TEST_S3_BUCKET (set by the test harness global setup)',
    );
  }
  return { endpoint, accessKey, secretKey, bucket };
}

const PART = 5 * 1024 * 1024;

blobStoreConformance('S3BlobStore', async () => {
  const cfg = s3Config();
  const prefix = `conformance/${randomUUID()}/`;
  // The contract's touch moves the time every time: no refresh throttle here (tested below).
  const store = new S3BlobStore({
    ...cfg,
    prefix,
    partSize: PART,
    concurrency: 4,
    touchRefreshMs: 0,
  });
  await store.ensureBucket();
  const rawKeys = async (): Promise<string[]> => {
    const keys: string[] = [];
    for await (const item of (await store.client()).listObjectsV2(
      cfg.bucket,
      prefix,
      true,
    ) as AsyncIterable<{
      name?: string;
    }>) {
      if (item.name !== undefined) keys.push(item.name.slice(prefix.length));
    }
    return keys.sort();
  };
  return {
    store,
    largeThreshold: PART,
    async corrupt(digest, bytes) {
      await (await store.client()).putObject(cfg.bucket, store.keyOf(digest), bytes, bytes.length);
    },
    rawEntries: rawKeys,
    async cleanup() {
      // One at a time: s3rver's multi-object delete races on its own directory cleanup.
      for (const k of await rawKeys())
        await (await store.client()).removeObject(cfg.bucket, prefix + k);
    },
  };
});

/** Counts the HEAD and copy requests a store's client sends (the real requests still go out). */
async function countRequests(store: S3BlobStore): Promise<{ heads: number; copies: number }> {
  const c = await store.client();
  const n = { heads: 0, copies: 0 };
  const stat = c.statObject.bind(c);
  const copy = c.copyObject.bind(c);
  c.statObject = (...a: Parameters<typeof stat>) => (n.heads++, stat(...a));
  c.copyObject = ((...a: Parameters<typeof copy>) => (n.copies++, copy(...a))) as typeof copy;
  return n;
}

describe('S3BlobStore specifics', () => {
  it('touches (copies) a blob only when its last use is older than the refresh', async () => {
    const cfg = s3Config();
    const prefix = `specifics/${randomUUID()}/`;
    // The same bucket and prefix through two stores: a refresh of an hour and none.
    const hourly = new S3BlobStore({ ...cfg, prefix });
    const always = new S3BlobStore({ ...cfg, prefix, touchRefreshMs: 0 });
    expect(hourly.touchRefreshMs).toBe(60 * 60 * 1000);
    const bytes = Buffer.from(`touch-refresh ${randomUUID()}`);
    const { digest, size } = await hourly.put(undefined, bytes);
    const stored = (await hourly.lastUsed(digest))!.getTime();
    const n = await countRequests(hourly);
    // Used within the hour: neither a touch nor a put of the same content copies it, and the
    // put's dedup asks one HEAD (it used to ask two).
    expect(await hourly.touch(digest)).toBe(true);
    expect(await hourly.put(digest, bytes, { size })).toEqual({ digest, size });
    expect(n).toEqual({ heads: 2, copies: 0 });
    expect((await hourly.lastUsed(digest))!.getTime()).toBe(stored);
    // Due (a refresh of 0): every touch copies; S3 keeps times in seconds, so touch until it moves.
    const m = await countRequests(always);
    await waitFor('a due touch to move the time', async () => {
      expect(await always.touch(digest)).toBe(true);
      return (await always.lastUsed(digest))!.getTime() > stored;
    });
    expect(m.copies).toBeGreaterThan(0);
    expect(m.heads).toBeGreaterThan(0);
    // What the due touch wrote counts as a use for the hourly store too: no copy.
    const copies = n.copies;
    expect(await hourly.touch(digest)).toBe(true);
    expect(n.copies).toBe(copies);
    expect(await hourly.touch(sha256Digest('never stored'))).toBe(false);
    await (await hourly.client()).removeObject(cfg.bucket, hourly.keyOf(digest));
  });

  it('refuses a negative touch refresh with a typed error', () => {
    expect(() => new S3BlobStore({ ...s3Config(), touchRefreshMs: -1 })).toThrow(StoreConfigError);
  });

  it('reports an endpoint unreachable beyond outageMs as a retryable StoreUnavailableError, after resending', async () => {
    const retries: string[] = [];
    const store = new S3BlobStore({
      endpoint: 'http://127.0.0.1:1',
      accessKey: 'x',
      secretKey: 'y',
      bucket: 'kiln-test',
      outageMs: 400,
      onRetry: (e) => retries.push(e.code),
    });
    const err = await store.put(undefined, Buffer.from('nowhere')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoreUnavailableError);
    expect((err as StoreUnavailableError).retryable).toBe(true);
    expect((err as Error).message).toContain('ECONNREFUSED');
    expect(retries.length).toBeGreaterThan(0);
    expect(new Set(retries)).toEqual(new Set(['ECONNREFUSED']));
    await expect(store.stat(sha256Digest('x'))).rejects.toBeInstanceOf(StoreUnavailableError);
  });

  it('rides out a store that is away (connection refused) and answers once it is back', async () => {
    // A stand-in S3 endpoint (a HEAD answer is all a stat needs), started only after the store
    // has been refused twice.
    const port = await freePort();
    const retries: string[] = [];
    const store = new S3BlobStore({
      endpoint: `http://127.0.0.1:${port}`,
      accessKey: 'x',
      secretKey: 'y',
      bucket: 'kiln-test',
      onRetry: (e) => retries.push(e.code),
    });
    const stat = store.stat(sha256Digest('five!'));
    stat.catch(() => undefined);
    await waitFor('two resends', () => retries.length >= 2, { timeoutMs: 20_000 });
    const server = createServer((_req, res) => {
      res.writeHead(200, {
        'Content-Length': '5',
        ETag: '"0123456789abcdef"',
        'Last-Modified': new Date().toUTCString(),
      });
      res.end();
    });
    await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
    try {
      expect(await stat).toEqual({ size: 5 });
      expect(new Set(retries)).toEqual(new Set(['ECONNREFUSED']));
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('never lists temp uploads left by a crash, and removes stale ones', async () => {
    const cfg = s3Config();
    const prefix = `specifics/${randomUUID()}/`;
    const store = new S3BlobStore({ ...cfg, prefix });
    const kept = await store.put(undefined, Buffer.from('kept'));
    await (
      await store.client()
    ).putObject(cfg.bucket, `${prefix}uploads/crashed`, Buffer.from('partial'));
    try {
      const listed = [];
      for await (const b of store.list()) listed.push({ digest: b.digest, size: b.size });
      expect(listed).toEqual([kept]);
      expect(await store.removeStaleUploads(3600_000)).toBe(0);
      expect(await store.removeStaleUploads(0)).toBe(1);
      const keys: string[] = [];
      for await (const item of (await store.client()).listObjectsV2(
        cfg.bucket,
        prefix,
        true,
      ) as AsyncIterable<{ name: string }>) {
        keys.push(item.name.slice(prefix.length));
      }
      expect(keys).toEqual([`blobs/sha256/${kept.digest.slice('sha256:'.length)}`]);
    } finally {
      await store.delete(kept.digest);
      await (await store.client()).removeObject(cfg.bucket, `${prefix}uploads/crashed`);
    }
  });

  it('resends an idempotent request whose connection dropped (a stale keep-alive socket)', async () => {
    let requests = 0;
    const server = createServer((req, res) => {
      requests++;
      if (requests === 1) {
        req.socket.destroy();
        return;
      }
      res.writeHead(200, {
        'Content-Length': '5',
        ETag: '"0123456789abcdef"',
        'Last-Modified': new Date().toUTCString(),
      });
      res.end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = server.address() as AddressInfo;
      const store = new S3BlobStore({
        endpoint: `http://127.0.0.1:${port}`,
        accessKey: 'x',
        secretKey: 'y',
        bucket: 'kiln-test',
      });
      expect(await store.stat(sha256Digest('five!'))).toEqual({ size: 5 });
      expect(requests).toBe(2);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('names the backend failure when the bucket does not exist', async () => {
    const cfg = s3Config();
    const store = new S3BlobStore({ ...cfg, bucket: `missing-${randomUUID().slice(0, 8)}` });
    const err = await store
      .put(undefined, Buffer.alloc(11 * 1024 * 1024, 1))
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoreUnavailableError);
    expect((err as StoreUnavailableError).details.s3code).toBe('NoSuchBucket');
    expect((err as StoreUnavailableError).retryable).toBe(false);
  });
});
