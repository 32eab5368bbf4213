export { detectArchive, unpackArchive } from './archive.js';
export type { UnpackOptions } from './archive.js';
export { cloneTree, copyPath, resolveWildcards } from './copy-tree.js';
export type { CopyOptions } from './copy-tree.js';
export { FsError, FsErrorCode, errnoOf, lstatOrUndefined } from '@kiln/layers';
export { goMatch, hasWildcards, isValidPattern, splitWildcards } from './match.js';
export {
  applyMeta,
  chmodInRoot,
  lchownInRoot,
  mkdirAll,
  mkdirAllResolved,
  mkdirOne,
  removeInRoot,
  setTimes,
  utimesInRoot,
  writeFileInRoot,
} from './ops.js';
export type { CreateMeta, EntryOptions, Owner } from './ops.js';
export {
  EMPTY_MATCH_INFO,
  Pattern,
  PatternMatcher,
  cleanPattern,
  matchesOrParentMatches,
} from './patterns.js';
export type { MatchInfo } from './patterns.js';
export { MAX_SYMLINKS, cleanRootPath, displayPath, resolveInRoot, resolveRel } from '@kiln/layers';
export type { ResolveOptions } from '@kiln/layers';
