/**
 * BuildKit's `type=s3` cache (`cache/remotecache/s3`): under `bucket`/`prefix`, every layer blob at
 * `<blobs_prefix><digest>` (default `blobs/`) and the cache config itself, its layers annotated
 * with diffID, size and media type, at `<manifests_prefix><name>` (default `manifests/buildkit`;
 * `name` may list several, `;`-separated: the export writes each, the import reads the first).
 * Attributes are BuildKit's: `bucket`, `region`, `endpoint_url`, `use_path_style`,
 * `access_key_id`, `secret_access_key`, `session_token`, `prefix`, `manifests_prefix`,
 * `blobs_prefix`, `name`. Credentials come from the attributes or the scheduler's `AWS_*`
 * environment; they are never logged.
 */
import type { Readable } from 'node:stream';
import type { Client } from 'minio';
import type { BlobStore, Digest } from '@kiln/store';
import { ImportedCache, marshalCacheConfig, parseCacheConfig } from '@kiln/remote-cache';
import type { ExportedCache } from '@kiln/remote-cache';
import { SolveRequestInvalidError } from '../solver/errors.js';

export interface S3CacheConfig {
  bucket: string;
  region: string;
  endpoint: URL;
  pathStyle: boolean;
  accessKey: string;
  secretKey: string;
  sessionToken: string;
  prefix: string;
  manifestsPrefix: string;
  blobsPrefix: string;
  names: string[];
}

/** The cache's settings from its attributes (BuildKit's names and defaults). */
export function s3CacheConfig(
  attrs: Record<string, string>,
  env: NodeJS.ProcessEnv = process.env,
): S3CacheConfig {
  const bucket = attrs.bucket ?? env.AWS_BUCKET ?? '';
  const region = attrs.region ?? env.AWS_REGION ?? '';
  if (!bucket)
    throw new SolveRequestInvalidError('type=s3 cache: bucket= is required', { cache: 's3' });
  if (!region)
    throw new SolveRequestInvalidError('type=s3 cache: region= is required', { cache: 's3' });
  let endpoint: URL;
  try {
    endpoint = new URL(attrs.endpoint_url || `https://s3.${region}.amazonaws.com`);
  } catch {
    throw new SolveRequestInvalidError('type=s3 cache: endpoint_url= is not a URL', {
      cache: 's3',
    });
  }
  return {
    bucket,
    region,
    endpoint,
    pathStyle: attrs.use_path_style === 'true',
    accessKey: attrs.access_key_id ?? env.AWS_ACCESS_KEY_ID ?? '',
    secretKey: attrs.secret_access_key ?? env.AWS_SECRET_ACCESS_KEY ?? '',
    sessionToken: attrs.session_token ?? env.AWS_SESSION_TOKEN ?? '',
    prefix: attrs.prefix ?? '',
    manifestsPrefix: attrs.manifests_prefix ?? 'manifests/',
    blobsPrefix: attrs.blobs_prefix ?? 'blobs/',
    names: (attrs.name ?? 'buildkit').split(';').filter(Boolean),
  };
}

async function client(c: S3CacheConfig): Promise<Client> {
  const { Client: MinioClient } = await import('minio');
  const useSSL = c.endpoint.protocol === 'https:';
  return new MinioClient({
    endPoint: c.endpoint.hostname,
    port: c.endpoint.port === '' ? (useSSL ? 443 : 80) : Number(c.endpoint.port),
    useSSL,
    accessKey: c.accessKey,
    secretKey: c.secretKey,
    ...(c.sessionToken ? { sessionToken: c.sessionToken } : {}),
    region: c.region,
    pathStyle: c.pathStyle,
  });
}

const blobKey = (c: S3CacheConfig, digest: string): string =>
  `${c.prefix}${c.blobsPrefix}${digest}`;
const manifestKey = (c: S3CacheConfig, name: string): string =>
  `${c.prefix}${c.manifestsPrefix}${name}`;

async function exists(s3: Client, bucket: string, key: string): Promise<boolean> {
  try {
    await s3.statObject(bucket, key);
    return true;
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === 'NotFound' || code === 'NoSuchKey') return false;
    throw e;
  }
}

/** Writes the blobs the bucket lacks, then the config under every name. */
export async function exportS3Cache(
  c: S3CacheConfig,
  store: BlobStore,
  exported: ExportedCache,
): Promise<void> {
  const s3 = await client(c);
  for (const l of exported.layers) {
    const key = blobKey(c, l.digest);
    if (await exists(s3, c.bucket, key)) continue;
    await s3.putObject(c.bucket, key, await store.get(l.digest as Digest), l.size, {
      'Content-Type': l.mediaType,
    });
  }
  const config = Buffer.from(marshalCacheConfig(exported.config));
  for (const name of c.names) await s3.putObject(c.bucket, manifestKey(c, name), config);
}

/** Reads the config of the first name; its blobs are fetched when a record is hit. */
export async function importS3Cache(
  c: S3CacheConfig,
): Promise<{ cache: ImportedCache; blob: (digest: string) => Promise<Readable> }> {
  const s3 = await client(c);
  const parts: Buffer[] = [];
  for await (const chunk of await s3.getObject(c.bucket, manifestKey(c, c.names[0] ?? 'buildkit')))
    parts.push(chunk as Buffer);
  const cache = new ImportedCache(parseCacheConfig(Buffer.concat(parts).toString()), []);
  return { cache, blob: (digest) => s3.getObject(c.bucket, blobKey(c, digest)) };
}
