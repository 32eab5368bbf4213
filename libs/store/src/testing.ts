/**
 * Test support for BlobStore backends (`@kiln/store/testing`): the conformance suite every backend
 * must pass. Imports vitest; never import it from production code.
 */
export { blobStoreConformance } from './blob-store.conformance.js';
export type { ConformanceHarness } from './blob-store.conformance.js';
