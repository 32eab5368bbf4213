/**
 * Test support shared by every package's tests (never imported by product code): the one poller
 * (`waitFor`), temp dirs, free ports, binaries, real service processes (nats-server,
 * docker-registry with or without auth, a token server, a fault proxy), service entries bundled
 * from source, hand-made tars, tree snapshots, extended attributes, a busybox rootfs.
 */
export {
  startAuthRegistry,
  harnessEnv,
  startFaultProxy,
  startTokenServer,
} from './auth-registry.js';
export type {
  Fault,
  FaultProxy,
  TokenRequestLog,
  TokenServer,
  TokenServerOptions,
} from './auth-registry.js';
export { bundleEntries } from './bundle.js';
export { generateDockerfile } from './dockerfile.js';
export { copyPlatformManifest, startPrivateRegistry } from './copy-image.js';
export type { PrivateRegistry } from './copy-image.js';
export { natsAuthEnv, startNats } from './nats.js';
export type { NatsServerHandle, NatsServerOptions } from './nats.js';
export { startRegistry } from './registry.js';
export type { RegistryAuthConfig, RegistryHandle, RegistryOptions } from './registry.js';
export { diffRootfs, ociRootfs } from './oci-rootfs.js';
export type { Rootfs, RootfsEntry } from './oci-rootfs.js';
export { makeBusyboxRootfs } from './rootfs.js';
export { startOutsideHost } from './outside-host.js';
export type { OutsideHost } from './outside-host.js';
export { makeSandbox } from './sandbox.js';
export type { Sandbox } from './sandbox.js';
export { testTask } from './tasks.js';
export { buildTar, exec, mountOverlay, readAll, snapshotTree, tarNames, treeBytes } from './tar.js';
export type { NodeInfo, TarEntry } from './tar.js';
export {
  REPO_ROOT,
  SETUP_HINT,
  freePort,
  hostIpv4Addresses,
  jsonBytes,
  makeTempDir,
  requireBinary,
  sweepStaleTempDirs,
  thrownCode,
  waitFor,
  whichBinary,
} from './util.js';
export type { WaitOptions } from './util.js';
export { CAPABILITY, getx, hexXattrs, setx } from './xattr.js';
export { FAIL, OUTPUT, SLEEP_MS, sleepExecutor } from './sleep-executor.js';
