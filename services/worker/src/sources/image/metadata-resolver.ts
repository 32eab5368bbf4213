import { formatPlatform } from '@kiln/protocol';
import type { Platform } from '@kiln/protocol';
import type { Digest } from '@kiln/store';
import { formatReference, toReference } from '@kiln/registry';
import type { ImageConfig } from '@kiln/registry';
import type { ImageSource } from './image-source.js';

export interface ResolvedImageConfig {
  /** The reference pinned to the digest it resolved to (`...:tag@sha256:...`), as BuildKit returns it. */
  ref: string;
  /** The digest the reference resolved to (the index for multi-platform images). */
  digest: Digest;
  /** The image config of the platform's manifest: env, workdir, user, entrypoint, cmd... */
  config: ImageConfig;
}

export interface ResolveImageConfigOptions {
  /** `pull`: always ask the registry (BuildKit's ResolveModeForcePull); default uses the cache. */
  resolveMode?: 'default' | 'pull';
}

export interface ImageMetadataResolverOptions {
  /** Entries kept (default 256; least recently used evicted). */
  maxEntries?: number;
  /** How long a tag's resolution is reused (default 60 s); digest references never go stale. */
  tagTtlMs?: number;
}

interface Entry {
  value: Promise<ResolvedImageConfig>;
  expiresAt: number;
}

/**
 * Answers a frontend's "what is this image's config" (BuildKit's ResolveImageConfig) without
 * pulling layers, with a small in-memory cache keyed by reference and platform. Concurrent
 * lookups of the same key share one registry round trip; failures are not cached.
 */
export class ImageMetadataResolver {
  private readonly cache = new Map<string, Entry>();
  private readonly maxEntries: number;
  private readonly tagTtlMs: number;

  constructor(
    private readonly source: ImageSource,
    opts: ImageMetadataResolverOptions = {},
  ) {
    this.maxEntries = opts.maxEntries ?? 256;
    this.tagTtlMs = opts.tagTtlMs ?? 60_000;
  }

  resolveImageConfig(
    ref: string,
    platform: Platform,
    opts: ResolveImageConfigOptions = {},
  ): Promise<ResolvedImageConfig> {
    const parsed = toReference(ref);
    const key = `${formatReference(parsed)} ${formatPlatform(platform)}`;
    const now = Date.now();
    const hit = this.cache.get(key);
    if (hit !== undefined && hit.expiresAt > now && opts.resolveMode !== 'pull') {
      this.cache.delete(key);
      this.cache.set(key, hit); // most recently used last
      return hit.value;
    }
    const value = this.source.resolve(parsed, platform).then((img) => ({
      ref: img.ref,
      digest: img.digest,
      config: img.config,
    }));
    const entry: Entry = {
      value,
      expiresAt: parsed.digest !== undefined ? Infinity : now + this.tagTtlMs,
    };
    this.cache.delete(key);
    this.cache.set(key, entry);
    while (this.cache.size > this.maxEntries) {
      const oldest = this.cache.keys().next().value;
      if (oldest === undefined) break;
      this.cache.delete(oldest);
    }
    value.catch(() => {
      if (this.cache.get(key) === entry) this.cache.delete(key);
    });
    return value;
  }
}
