export {};
export * from './dispatch/index.js';
