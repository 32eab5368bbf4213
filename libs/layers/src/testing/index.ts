/** Test support for packages that test layers and xattrs: hand-made tars, tree snapshots, xattr helpers. */
export {
  buildTar,
  exec,
  mountOverlay,
  readAll,
  snapshotTree,
  tarNames,
  tempDir,
} from './tar-fixtures.js';
export type { NodeInfo, TarEntry } from './tar-fixtures.js';
export { CAPABILITY, dumpXattrs, getx, setx } from './xattr-fixtures.js';
