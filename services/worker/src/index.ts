export * from './layers/index.js';
