/** Capability names, source attribute keys and index sentinels, as BuildKit spells them. */

export const Caps = {
  constraints: 'constraints',
  platform: 'platform',
  metaIgnoreCache: 'meta.ignorecache',
  metaDescription: 'meta.description',
  metaExportCache: 'meta.exportcache',

  sourceImage: 'source.image',
  sourceImageResolveMode: 'source.image.resolvemode',
  sourceImageLayerLimit: 'source.image.layerlimit',
  sourceLocal: 'source.local',
  sourceLocalUnique: 'source.local.unique',
  sourceLocalSessionID: 'source.local.sessionid',
  sourceLocalIncludePatterns: 'source.local.includepatterns',
  sourceLocalFollowPaths: 'source.local.followpaths',
  sourceLocalExcludePatterns: 'source.local.excludepatterns',
  sourceLocalSharedKeyHint: 'source.local.sharedkeyhint',
  sourceGit: 'source.git',
  sourceGitKeepDir: 'source.git.keepgitdir',
  sourceGitFullURL: 'source.git.fullurl',
  sourceGitHTTPAuth: 'source.git.httpauth',
  sourceGitKnownSSHHosts: 'source.git.knownsshhosts',
  sourceGitMountSSHSock: 'source.git.mountsshsock',
  sourceHTTP: 'source.http',
  sourceHTTPChecksum: 'source.http.checksum',
  sourceHTTPPerm: 'source.http.perm',
  sourceHTTPUIDGID: 'soruce.http.uidgid', // sic: BuildKit's spelling of this capability

  execMetaBase: 'exec.meta.base',
  execMetaNetwork: 'exec.meta.network',
  execMetaSecurity: 'exec.meta.security',
  execMetaProxy: 'exec.meta.proxyenv',
  execMetaUlimit: 'exec.meta.ulimit',
  execMetaCgroupParent: 'exec.meta.cgroup.parent',
  execMetaExtraHosts: 'exec.meta.extrahosts',
  execMetaHostname: 'exec.meta.hostname',
  execMountBind: 'exec.mount.bind',
  execMountCache: 'exec.mount.cache',
  execMountCacheSharing: 'exec.mount.cache.sharing',
  execMountSelector: 'exec.mount.selector',
  execMountTmpfs: 'exec.mount.tmpfs',
  execMountTmpfsSize: 'exec.mount.tmpfs.size',
  execMountSecret: 'exec.mount.secret',
  execMountSSH: 'exec.mount.ssh',
  execSecretEnv: 'exec.secretenv',
  execValidExitCode: 'exec.validexitcode',

  fileBase: 'file.base',
  fileSymlink: 'file.symlink.create',
  buildOpLLBFileName: 'source.buildop.llbfilename',
  mergeOp: 'mergeop',
  diffOp: 'diffop',
} as const;

export const Attrs = {
  keepGitDir: 'git.keepgitdir',
  fullRemoteURL: 'git.fullurl',
  authHeaderSecret: 'git.authheadersecret',
  authTokenSecret: 'git.authtokensecret',
  knownSSHHosts: 'git.knownsshhosts',
  mountSSHSock: 'git.mountsshsock',
  localSessionID: 'local.session',
  localUniqueID: 'local.unique',
  includePatterns: 'local.includepattern',
  followPaths: 'local.followpaths',
  excludePatterns: 'local.excludepatterns',
  sharedKeyHint: 'local.sharedkeyhint',
  llbDefinitionFilename: 'llbbuild.filename',
  httpChecksum: 'http.checksum',
  httpFilename: 'http.filename',
  httpPerm: 'http.perm',
  httpUID: 'http.uid',
  httpGID: 'http.gid',
  imageResolveMode: 'image.resolvemode',
  imageRecordType: 'image.recordtype',
  imageLayerLimit: 'image.layerlimit',
} as const;

/** Description key that names a vertex in progress output. */
export const CUSTOM_NAME = 'llb.customname';
/** The input name of a BuildOp's definition. */
export const LLB_DEFINITION_INPUT = 'buildkit.llb.definition';
/** Mount/action input sentinel: no input (scratch). */
export const EMPTY_INPUT = -1;
/** Mount/action output sentinel: not an output. */
export const SKIP_OUTPUT = -1;
export const ROOT_MOUNT = '/';
