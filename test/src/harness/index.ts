export * from './env.js';
export * from './fixtures.js';
export * from './nats.js';
export * from './process.js';
export * from './registry.js';
export * from './s3.js';
export * from './util.js';
export * from './bundle.js';
