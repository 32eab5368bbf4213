export { applyLayer, applyTar, entryPath } from './apply-layer.js';
export type { ApplyOptions, ApplyResult, TarApplyOptions, TarLimits } from './apply-layer.js';
export { MediaTypes, coalescer, detectCompression, zstdSupport } from './compression.js';
export type { ArchiveCompression, Compression } from './compression.js';
export { diffLayer, layerMediaType, layerOfTar, putLayer, writeLayer } from './diff-layer.js';
export type { DiffOptions, DiffSource, LayerDescriptor, LayerStream } from './diff-layer.js';
export { LayerError, LayerErrorCode } from './errors.js';
export { FsError, FsErrorCode, errnoOf } from './fs-errors.js';
export {
  MAX_SYMLINKS,
  cleanRootPath,
  lstatOrUndefined,
  displayPath,
  resolveInRoot,
  resolveRel,
} from './root-path.js';
export type { ResolveOptions } from './root-path.js';
export { entryXattrs, keepPaxXattrs, parsePaxXattrs } from './tar-xattrs.js';
export {
  XATTR_NAME_MAX,
  XATTR_SIZE_MAX,
  isSkippedXattr,
  readTreeXattrs,
  validXattrName,
  writeXattrs,
  xattrTarget,
} from './xattr.js';
export type { XattrTarget, XattrWriteResult, Xattrs } from './xattr.js';
export { SMALL_FILE, lstatMaybeSync, yielder } from './sync-fs.js';
