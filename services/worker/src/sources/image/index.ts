export { ImageSource } from './image-source.js';
export type { ImageLayer, ImageSourceOptions, ResolvedImage } from './image-source.js';
export { ImageMetadataResolver } from './metadata-resolver.js';
export type {
  ImageMetadataResolverOptions,
  ResolveImageConfigOptions,
  ResolvedImageConfig,
} from './metadata-resolver.js';
