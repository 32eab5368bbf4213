export { ListenFailedError, listenHttp, splitHostPort } from './listen.js';
export { OpsServer } from './ops-server.js';
export type { OpsServerOptions, ReadinessCheck } from './ops-server.js';
export { startTracing } from './tracing.js';
export type { Tracing } from './tracing.js';
