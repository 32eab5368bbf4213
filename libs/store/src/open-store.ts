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
      /** S3BlobStoreOptions.touchRefreshMs. */
      touchRefreshMs?: number;
    };

/**
 * The store a service's environment names: an S3 bucket (`KILN_S3_ENDPOINT`, `KILN_S3_BUCKET`,
 * `KILN_S3_ACCESS_KEY`, `KILN_S3_SECRET_KEY`, optional `KILN_S3_PREFIX`, `KILN_S3_REGION`,
 * `KILN_S3_TOUCH_REFRESH_MS`), else the
 * directory `dir` (a `--store-dir` flag or `KILN_STORE_DIR`, the caller's choice), else none.
 * Returns the names of the S3 settings that are missing when only some are given.
 */
export function storeConfigFromEnv(
  env: Readonly<Record<string, string | undefined>>,
  dir?: string,
): { config?: StoreConfig; missing?: string[] } {
  if (env.KILN_S3_ENDPOINT || env.KILN_S3_BUCKET) {
    const need = ['KILN_S3_ENDPOINT', 'KILN_S3_BUCKET', 'KILN_S3_ACCESS_KEY', 'KILN_S3_SECRET_KEY'];
    const missing = need.filter((k) => !env[k]);
    if (missing.length > 0) return { missing };
    return {
      config: {
        type: 's3',
        endpoint: env.KILN_S3_ENDPOINT!,
        bucket: env.KILN_S3_BUCKET!,
        accessKey: env.KILN_S3_ACCESS_KEY!,
        secretKey: env.KILN_S3_SECRET_KEY!,
        ...(env.KILN_S3_PREFIX ? { prefix: env.KILN_S3_PREFIX } : {}),
        ...(env.KILN_S3_REGION ? { region: env.KILN_S3_REGION } : {}),
        ...(env.KILN_S3_TOUCH_REFRESH_MS
          ? { touchRefreshMs: Number(env.KILN_S3_TOUCH_REFRESH_MS) }
          : {}),
      },
    };
  }
  return dir ? { config: { type: 'fs', dir } } : {};
}

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
    ...(c.touchRefreshMs !== undefined ? { touchRefreshMs: c.touchRefreshMs } : {}),
  });
  await s3.ensureBucket();
  return s3;
}
