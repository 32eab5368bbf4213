export { ImageSource } from './image-source.js';
export type { ImageLayer, ImageSourceOptions, ResolvedImage } from './image-source.js';
