import { chmod, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { blobStoreConformance } from './blob-store.conformance.js';
import { FsBlobStore } from './fs-blob-store.js';

blobStoreConformance('FsBlobStore', async () => {
  const root = await mkdtemp(join(tmpdir(), 'kiln-fs-store-'));
  const store = new FsBlobStore({ root });
  return {
    store,
    largeThreshold: 1024 * 1024,
    async corrupt(digest, bytes) {
      const path = store.pathOf(digest);
      await chmod(path, 0o644);
      await writeFile(path, bytes);
    },
    async rawEntries() {
      try {
        return (await readdir(join(root, 'blobs', 'sha256'))).sort();
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
        throw err;
      }
    },
    async cleanup() {
      await rm(root, { recursive: true, force: true });
    },
  };
});
