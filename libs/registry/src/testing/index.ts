/** Test support for registry users: real docker-registry processes with auth, a token server, a fault-injecting proxy. */
export {
  copyPlatformManifest,
  harnessEnv,
  startAuthRegistry,
  startFaultProxy,
  startTokenServer,
  tempDir,
  waitUntil,
} from './registries.js';
export type {
  Fault,
  FaultProxy,
  RegistryAuthConfig,
  TestRegistry,
  TokenRequestLog,
  TokenServer,
  TokenServerOptions,
} from './registries.js';
