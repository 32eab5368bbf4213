export * from './telemetry.js';
export * from './child-process.js';
export * from './nats-server.js';
export * from './concurrency.js';
export * from './units.js';
