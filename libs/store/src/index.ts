export type { BlobInfo, BlobSource, BlobStore, GetOptions, PutOptions } from './blob-store.js';
export { DigestingStream, digestHex, isDigest, parseDigest, sha256Digest } from './digest.js';
export type { Digest } from './digest.js';
export {
  BlobNotFoundError,
  DigestMismatchError,
  InvalidBlobError,
  StoreUnavailableError,
  StoreConfigError,
} from './errors.js';
export { FsBlobStore } from './fs-blob-store.js';
export type { FsBlobStoreOptions } from './fs-blob-store.js';
export { S3BlobStore } from './s3-blob-store.js';
export type { S3BlobStoreOptions } from './s3-blob-store.js';
export { openStore, storeConfigFromEnv } from './open-store.js';
export type { StoreConfig } from './open-store.js';
