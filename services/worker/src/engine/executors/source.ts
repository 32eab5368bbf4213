/**
 * SourceOp executor: `docker-image://` (pulled through the registry client into the local blob
 * store, each layer committed as a snapshot named by its OCI chain ID so images share layers) and
 * `local://` (the session's directory, filtered), `git://` (the git CLI, pinned to a commit) and
 * `http(s)://` (one downloaded file, pinned to its checksum). Other schemes fail with a typed
 * SOURCE_UNSUPPORTED error naming the identifier.
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { KilnError, LinuxAmd64, platformFromPb } from '@kiln/protocol';
import type { pb } from '@kiln/protocol';
import type { Platform } from '@kiln/protocol';
import { applyLayer } from '@kiln/layers';
import type { BlobStore } from '@kiln/store';
import { buildSnapshot, readSnapshot } from '../../ops/snapshots.js';
import type { SnapshotEnv } from '../../ops/snapshots.js';
import type { LayerCache } from '../../exporters/layers.js';
import type { ImageSource, ResolvedImage } from '../../sources/image/index.js';
import { checkoutGit, gitPin, gitSpec } from '../../sources/git/git-source.js';
import {
  HttpDownloader,
  httpPin,
  httpSpec,
  writeHttpFile,
} from '../../sources/http/http-source.js';
import { copyLocal, localDir, localPin, localSpec } from '../../sources/local/local-source.js';
import type { ExecutorContext, OpExecutor } from '../../solver/solver.js';

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
  private readonly resolved = new Map<string, Promise<ResolvedImage>>();
  private readonly layerBuilds = new Map<string, Promise<string>>();
  private readonly http: HttpDownloader;
  /** Commit pinned per git identifier within this process (the build checks out what it keyed). */
  private readonly gitPins = new Map<string, string>();

  constructor(
    private readonly env: SnapshotEnv,
    private readonly images: ImageSource,
    private readonly store: BlobStore,
    private readonly layers?: LayerCache,
  ) {
    this.http = new HttpDownloader(join(env.tmpDir, 'http'));
  }

  private resolveImage(op: pb.IOp): Promise<ResolvedImage> {
    const id = op.source!.identifier!;
    const platform = platformOf(op.platform);
    const k = `${id}|${platform.os}/${platform.architecture}/${platform.variant ?? ''}`;
    let p = this.resolved.get(k);
    if (!p) {
      p = this.images.resolve(id, platform);
      // A failed resolve is retried by the next build rather than cached.
      p.catch(() => this.resolved.delete(k));
      this.resolved.set(k, p);
    }
    return p;
  }

  async pin(ctx: ExecutorContext): Promise<string> {
    const id = ctx.op.source?.identifier ?? '';
    if (id.startsWith('docker-image://')) return (await this.resolveImage(ctx.op)).manifestDigest;
    if (id.startsWith('local://')) {
      const spec = localSpec(ctx.op.source!);
      if (ctx.session.localSnapshot) {
        const snapshot = await ctx.session.localSnapshot(spec);
        return readSnapshot(this.env, snapshot, (dir) => localPin(spec, dir));
      }
      return localPin(spec, await localDir(spec, ctx.session));
    }
    if (id.startsWith('http://') || id.startsWith('https://'))
      return httpPin(httpSpec(ctx.op.source!), this.http, ctx.digest, ctx.signal);
    if (id.startsWith('git://')) {
      const commit = await gitPin(gitSpec(ctx.op.source!));
      this.gitPins.set(ctx.digest, commit);
      return commit;
    }
    throw new UnsupportedSourceError(id);
  }

  async exec(ctx: ExecutorContext): Promise<(string | undefined)[]> {
    const id = ctx.op.source?.identifier ?? '';
    if (id.startsWith('docker-image://')) {
      const img = await this.images.pull(id, platformOf(ctx.op.platform));
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
          writeHttpFile(spec, this.http, ctx.digest, dest, ctx.signal),
        ),
      ];
    }
    if (id.startsWith('git://')) {
      const spec = gitSpec(ctx.op.source!);
      const commit = this.gitPins.get(ctx.digest) ?? (await gitPin(spec));
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
            await applyLayer(await this.store.get(digest as `sha256:${string}`), dir);
          },
          name,
        );
      })();
      p.catch(() => this.layerBuilds.delete(name));
      this.layerBuilds.set(name, p);
    }
    return p;
  }
}
