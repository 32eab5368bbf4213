export { applyLayer } from './apply-layer.js';
export type { ApplyOptions, ApplyResult } from './apply-layer.js';
export { MediaTypes, detectCompression, zstdSupport } from './compression.js';
export type { Compression } from './compression.js';
export { diffLayer, layerMediaType, writeLayer } from './diff-layer.js';
export type { DiffOptions, DiffSource, LayerDescriptor, LayerStream } from './diff-layer.js';
export { LayerError, LayerErrorCode } from './errors.js';
