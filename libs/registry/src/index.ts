export {
  Authorizer,
  basicAuthorization,
  chainCredentials,
  dockerConfigCredentials,
  parseChallenges,
} from './auth.js';
export type { AuthChallenge, CredentialsProvider, RegistryCredentials } from './auth.js';
export { RegistryClient, formatReference, toReference } from './client.js';
export { imagePurl } from './purl.js';
export type {
  BlobUploadSource,
  FetchBlobOptions,
  FetchedManifest,
  PushBlobOptions,
  PushBlobResult,
  RegistryClientOptions,
  Repository,
  ResolvedReference,
} from './client.js';
export {
  DigestMismatchError,
  ImageNotFoundError,
  ManifestInvalidError,
  PlatformNotFoundError,
  RegistryAuthError,
  RegistryRequestError,
  RegistryUnavailableError,
} from './errors.js';
export { DOCKER_HUB_ENDPOINT, isLoopbackHost, registryBaseUrl } from './hosts.js';
export {
  MANIFEST_ACCEPT,
  MediaType,
  isIndexMediaType,
  isLayerMediaType,
  isManifestMediaType,
  parseDescriptor,
  parseImageConfig,
  parseManifest,
} from './manifest.js';
export type {
  Descriptor,
  ImageConfig,
  ImageIndex,
  ImageManifest,
  ManifestDocument,
} from './manifest.js';
export { selectPlatform } from './platform-match.js';
export { resolvePlatformImage } from './image.js';
export type { ImageDocumentCache, PlatformImage } from './image.js';
