/**
 * Which content store a service uses, and opening it: the filesystem store (one directory,
 * possibly shared) or an S3 bucket. Every service of the farm names the same one.
 */
import type { BlobStore } from './blob-store.js';
import { FsBlobStore } from './fs-blob-store.js';
import { S3BlobStore } from './s3-blob-store.js';

export type StoreConfig =
  | { type: 'fs'; dir: string }
  | {
      type: 's3';
      endpoint: string;
      bucket: string;
      accessKey: string;
      secretKey: string;
      prefix?: string;
      region?: string;
    };

/** Opens the configured content store (an S3 bucket is created when missing). */
export async function openStore(c: StoreConfig): Promise<BlobStore> {
  if (c.type === 'fs') return new FsBlobStore({ root: c.dir });
  const s3 = new S3BlobStore({
    endpoint: c.endpoint,
    bucket: c.bucket,
    accessKey: c.accessKey,
    secretKey: c.secretKey,
    ...(c.prefix ? { prefix: c.prefix } : {}),
    ...(c.region ? { region: c.region } : {}),
  });
  await s3.ensureBucket();
  return s3;
}
