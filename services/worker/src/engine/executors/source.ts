/**
 * SourceOp executor: `docker-image://` (pulled through the registry client into the local blob
 * store, each layer committed as a snapshot named by its OCI chain ID so images share layers) and
 * `local://` (the session's directory, filtered), `git://` (the git CLI, checked out at the commit
 * the ref names now) and `http(s)://` (one downloaded file, checked against its checksum when given). Other schemes fail with a typed
 * SOURCE_UNSUPPORTED error naming the identifier.
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { KilnError, LinuxAmd64, platformFromPb } from '@kiln/protocol';
import type { pb } from '@kiln/protocol';
import type { Platform } from '@kiln/protocol';
import { applyLayer } from '@kiln/layers';
import type { BlobStore } from '@kiln/store';
import { buildSnapshot, unpackOpts } from '../../ops/snapshots.js';
import type { SnapshotEnv } from '../../ops/snapshots.js';
import type { LayerCache } from '../../exporters/layers.js';
import type { ImageSource } from '../../sources/image/index.js';
import { checkoutGit, gitPin, gitSpec } from '../../sources/git/git-source.js';
import { HttpDownloader, httpSpec, writeHttpFile } from '../../sources/http/http-source.js';
import { copyLocal, localDir, localSpec } from '../../sources/local/local-source.js';
import type { ExecutorContext, OpExecutor } from '../../ops/executor.js';
import type { CredentialsProvider } from '@kiln/registry';

export class UnsupportedSourceError extends KilnError {
  constructor(identifier: string) {
    super('SOURCE_UNSUPPORTED', `source ${identifier} is not supported by this worker yet`, {
      details: { identifier },
    });
  }
}

function platformOf(p: pb.IPlatform | null | undefined): Platform {
  return platformFromPb(p) ?? LinuxAmd64;
}

export class SourceExecutor implements OpExecutor {
  private readonly layerBuilds = new Map<string, Promise<string>>();
  private readonly http: HttpDownloader;

  constructor(
    private readonly env: SnapshotEnv,
    private readonly images: ImageSource,
    private readonly store: BlobStore,
    private readonly layers?: LayerCache,
    private readonly imagesFor?: (credentials: CredentialsProvider) => ImageSource,
  ) {
    this.http = new HttpDownloader(join(env.tmpDir, 'http'));
  }

  async exec(ctx: ExecutorContext): Promise<(string | undefined)[]> {
    const id = ctx.op.source?.identifier ?? '';
    if (id.startsWith('docker-image://')) {
      // With the build's registry credentials (its client's, through the session) when it has a
      // session; else the worker's client (anonymous unless the farm lends its own).
      const credentials = ctx.session.credentials;
      const images = credentials && this.imagesFor ? this.imagesFor(credentials) : this.images;
      const img = await images.pull(id, platformOf(ctx.op.platform));
      let parent: string | undefined;
      let chain = '';
      for (const layer of img.layers) {
        chain =
          chain === ''
            ? layer.diffID
            : `sha256:${createHash('sha256').update(`${chain} ${layer.diffID}`).digest('hex')}`;
        parent = await this.layerSnapshot(
          `layer-${chain.slice('sha256:'.length)}`,
          parent,
          layer.digest,
        );
        // Exporting an image built on this one reuses the registry's blob for this layer.
        if (this.layers && !this.layers.get(parent)) {
          await this.layers.set(parent, {
            digest: layer.digest,
            diffID: layer.diffID,
            size: layer.size,
            mediaType: layer.mediaType,
          });
        }
      }
      return [parent];
    }
    if (id.startsWith('local://')) {
      const spec = localSpec(ctx.op.source!);
      // A synced context is already a committed snapshot, shared with the builds before.
      if (ctx.session.localSnapshot) return [await ctx.session.localSnapshot(spec)];
      const dir = await localDir(spec, ctx.session);
      return [await buildSnapshot(this.env, undefined, (dest) => copyLocal(spec, dir, dest))];
    }
    if (id.startsWith('http://') || id.startsWith('https://')) {
      const spec = httpSpec(ctx.op.source!);
      return [
        await buildSnapshot(this.env, undefined, (dest) =>
          writeHttpFile(spec, this.http, dest, ctx.signal),
        ),
      ];
    }
    if (id.startsWith('git://')) {
      const spec = gitSpec(ctx.op.source!);
      const commit = await gitPin(spec);
      return [
        await buildSnapshot(this.env, undefined, (dest) =>
          checkoutGit(spec, commit, dest, join(this.env.tmpDir, 'git')),
        ),
      ];
    }
    throw new UnsupportedSourceError(id);
  }

  /** The committed snapshot of one layer on `parent`, built once per chain ID. */
  private layerSnapshot(name: string, parent: string | undefined, digest: string): Promise<string> {
    let p = this.layerBuilds.get(name);
    if (!p) {
      p = (async () => {
        const exists = await this.env.snapshotter.stat(name).then(
          () => true,
          () => false,
        );
        if (exists) return name;
        return buildSnapshot(
          this.env,
          parent,
          async (dir) => {
            await applyLayer(
              await this.store.get(digest as `sha256:${string}`),
              dir,
              unpackOpts(this.env),
            );
          },
          name,
        );
      })();
      // Shared while in flight only: garbage collection may remove the snapshot later, and the
      // next pull must then build it again.
      p.finally(() => this.layerBuilds.delete(name)).catch(() => undefined);
      this.layerBuilds.set(name, p);
    }
    return p;
  }
}
