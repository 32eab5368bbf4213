export * from './layers/index.js';
export * from './ops/exec/index.js';
export * from './ops/file/index.js';
export * from './registry/index.js';
export * from './sources/image/index.js';
export * from './tasks/index.js';
