/**
 * @kiln/llb: BuildKit's LLB builder for TypeScript. States are immutable; ops are vertices;
 * `marshal(state)` gives a Definition whose bytes are identical to BuildKit's Go client's.
 */
export { State, ExecState, scratch, NetMode, SecurityMode } from './state.js';
export type { StateValues, HostIP, Ulimit } from './state.js';
export { image, local, git, http, SourceOp } from './source.js';
export type { ImageOptions, LocalOptions, GitOptions, HttpOptions, ResolveMode } from './source.js';
export { ExecOp } from './exec.js';
export type { RunOptions, MountSpec, SecretSpec, SSHSpec, ProxyEnv, CacheSharing } from './exec.js';
export {
  FileAction,
  FileActionWithState,
  FileOp,
  mkdir,
  mkfile,
  rm,
  copy,
  symlink,
  parseChown,
} from './fileop.js';
export type {
  ChownSpec,
  UserSpec,
  CopyOptions,
  MkdirOptions,
  MkfileOptions,
  RmOptions,
  SymlinkOptions,
  CreatedTime,
  CopyInput,
} from './fileop.js';
export { merge, diff, build, MergeOp, DiffOp, BuildOp } from './merge-diff.js';
export { marshal, parseDefinition, Definition, opKind } from './definition.js';
export type { MarshalOptions, LoadedDefinition, LoadedOp, OpRef, OpKind } from './definition.js';
export { ancestors, dependents, subgraph, toDefinition, levels, inputDigests } from './dag.js';
export {
  LinuxAmd64,
  LinuxArm64,
  LinuxArmhf,
  LinuxArmel,
  LinuxS390x,
  LinuxPpc64le,
  LinuxRiscv64,
  parsePlatform,
  isKnownArchitecture,
  formatPlatform,
  normalizePlatform,
  platformMatches,
  hostPlatform,
} from '@kiln/protocol';
export type { Platform } from '@kiln/protocol';
export { parseImageReference, normalizeImageReference, formatImageReference } from './reference.js';
export type { ImageReference } from './reference.js';
export { InvalidDefinitionError } from './errors.js';
export type { LlbErrorCode } from './errors.js';
export { Caps, Attrs, CUSTOM_NAME } from './constants.js';
export { sha256Digest, Output } from './vertex.js';
export type { ConstraintsOptions, Vertex, OpMeta } from './vertex.js';
export { shlexSplit } from './shlex.js';
export {
  opToGoJson,
  opFromGoJson,
  metadataToGoJson,
  metadataFromGoJson,
  parseGoJson,
  stringifyGoJson,
  messageToGoJson,
} from './go-json-pb.js';
export type { GoJson } from './go-json-pb.js';
export { dumpLlb, marshalLlb } from './debug.js';
export {
  opCacheDigest,
  depSpecs,
  vertexCacheKey,
  outputCacheKey,
  sourceCacheKey,
  sourceOpDigest,
} from './cache-key.js';
export type { DepSpec, DepKey } from './cache-key.js';
export { ENTITLEMENTS, isEntitlement, opEntitlements } from './entitlements.js';
export type { Entitlement } from './entitlements.js';
export {
  buildkitCacheMap,
  buildkitRecordDigest,
  imageConfigCacheDigest,
} from './buildkit-cache-map.js';
export type { BuildkitCacheMap } from './buildkit-cache-map.js';
