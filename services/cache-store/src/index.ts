/** The cluster cache's store collector: mark from the cache index, sweep the content store. */
export { collectStore, startStoreCollector } from './store-gc.js';
export type { StoreCollectorOptions, StoreGcOptions, StoreGcReport } from './store-gc.js';
export { liveDigests, recordDigests } from './live-records.js';
