import { PassThrough, Readable } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { KilnError } from '@kiln/protocol';
import { parseImageReference } from '@kiln/llb';
import type { ImageReference } from '@kiln/llb';
import {
  DigestingStream,
  DigestMismatchError,
  InvalidBlobError,
  isDigest,
  sha256Digest,
} from '@kiln/store';
import type { Digest } from '@kiln/store';
import { Authorizer, chainCredentials, dockerConfigCredentials } from './auth.js';
import type { CredentialsProvider } from './auth.js';
import { ManifestInvalidError, RegistryRequestError, RegistryUnavailableError } from './errors.js';
import { registryBaseUrl } from './hosts.js';
import { MANIFEST_ACCEPT, parseManifest } from './manifest.js';
import type { Descriptor, ManifestDocument } from './manifest.js';
import { Transport, getWithRetries } from './transport.js';
import type { RegistryRequest } from './transport.js';

export interface RegistryClientOptions {
  /** Consulted first for credentials; then the docker config unless `dockerConfig` is false. */
  credentials?: CredentialsProvider;
  /** Path of a Docker CLI config with `auths` (default `~/.docker/config.json`); false: none. */
  dockerConfig?: string | false;
  /** Hosts (`host[:port]` or bare hostname) spoken to over plain HTTP; loopback hosts always are. */
  insecureRegistries?: readonly string[];
  /** Attempts per request for connection failures, 5xx and 429 (default 4). */
  maxAttempts?: number;
  /** First retry backoff, doubled per attempt (default 200 ms). */
  retryBaseDelayMs?: number;
  /** Manifests larger than this are refused (default 4 MiB, containerd's limit). */
  maxManifestBytes?: number;
  /** Chunk size for chunked blob uploads (default 8 MiB). */
  uploadChunkBytes?: number;
  userAgent?: string;
}

/** A repository on a registry: `{domain: '127.0.0.1:5000', path: 'library/busybox'}`. */
export type Repository = Pick<ImageReference, 'domain' | 'path'>;

export interface ResolvedReference {
  /** The reference as given, plus the digest it resolved to. */
  ref: ImageReference;
  /** The top-level descriptor (an index or a manifest). */
  descriptor: Descriptor;
}

export interface FetchedManifest {
  descriptor: Descriptor;
  /** The exact bytes, verified against the descriptor's digest. */
  bytes: Buffer;
  document: ManifestDocument;
}

export interface FetchBlobOptions {
  /**
   * Hash the stream and fail it on a mismatch (default true). Set false only when the consumer
   * verifies the same digest and size itself, e.g. `BlobStore.put(digest, stream, {size})`, to
   * hash once instead of twice.
   */
  verify?: boolean;
}

/** A blob to upload: its bytes, or a function opening them afresh (called once per attempt). */
export type BlobUploadSource = Buffer | (() => Readable | Promise<Readable>);

export interface PushBlobOptions {
  /** Repositories on the same registry that may already hold the blob: tried with a cross-repo mount first. */
  mountFrom?: readonly string[];
  /** Upload in PATCH chunks instead of one PUT (default: monolithic). */
  chunked?: boolean;
}

export interface PushBlobResult {
  /** How the blob got there: it was already present, mounted from another repository, or uploaded. */
  outcome: 'exists' | 'mounted' | 'uploaded';
}

const DEFAULT_USER_AGENT = 'kiln-worker/0.1';

/** Parses `docker-image://ref`, `ref` or an ImageReference into an ImageReference. */
export function toReference(ref: string | ImageReference): ImageReference {
  if (typeof ref !== 'string') return ref;
  return parseImageReference(
    ref.startsWith('docker-image://') ? ref.slice('docker-image://'.length) : ref,
  );
}

export function formatReference(r: ImageReference): string {
  return `${r.domain}/${r.path}${r.tag !== undefined ? `:${r.tag}` : ''}${r.digest !== undefined ? `@${r.digest}` : ''}`;
}

function pullScope(repo: Repository): string {
  return `repository:${repo.path}:pull`;
}

function pushScopes(repo: Repository): string[] {
  return [`repository:${repo.path}:pull,push`];
}

function wrapBodyError(err: unknown, what: string): Error {
  if (err instanceof KilnError) return err;
  return new RegistryUnavailableError(
    `${what}: download interrupted: ${err instanceof Error ? err.message : String(err)}`,
    {
      cause: err,
    },
  );
}

async function readLimited(res: Response, limit: number, what: string): Promise<Buffer> {
  const declared = Number(res.headers.get('content-length') ?? NaN);
  if (Number.isFinite(declared) && declared > limit) {
    await res.body?.cancel();
    throw new ManifestInvalidError(
      `${what}: ${declared} bytes is more than the ${limit} byte limit`,
    );
  }
  const chunks: Buffer[] = [];
  let n = 0;
  if (res.body === null) return Buffer.alloc(0);
  const reader = (res.body as WebReadableStream<Uint8Array>).getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      n += value.length;
      if (n > limit) {
        await reader.cancel().catch(() => undefined);
        throw new ManifestInvalidError(`${what}: more than the ${limit} byte limit`);
      }
      chunks.push(Buffer.from(value));
    }
  } catch (err) {
    throw wrapBodyError(err, what);
  }
  return Buffer.concat(chunks);
}

function verifyBytes(bytes: Buffer, desc: Pick<Descriptor, 'digest' | 'size'>, what: string): void {
  const actual = sha256Digest(bytes);
  if (actual !== desc.digest)
    throw new DigestMismatchError(desc.digest, actual, { details: { what } });
  if (bytes.length !== desc.size) {
    throw new InvalidBlobError(
      `${what}: size mismatch: expected ${desc.size} bytes, got ${bytes.length}`,
      {
        details: { digest: desc.digest, expected: desc.size, actual: bytes.length },
      },
    );
  }
}

/**
 * A client for the OCI distribution API (pull and push). Every manifest and blob is verified
 * against the digest it was requested by; a mismatch is a `DigestMismatchError` and the bytes are
 * never handed out as valid (streams error before their end). One instance holds auth state
 * (challenges, cached tokens) and is safe for concurrent use; share it across pulls.
 */
export class RegistryClient {
  private readonly transport: Transport;
  private readonly insecure: ReadonlySet<string>;
  private readonly maxManifestBytes: number;
  private readonly uploadChunkBytes: number;

  constructor(opts: RegistryClientOptions = {}) {
    const providers: CredentialsProvider[] = [];
    if (opts.credentials !== undefined) providers.push(opts.credentials);
    if (opts.dockerConfig !== false) providers.push(dockerConfigCredentials(opts.dockerConfig));
    const credentials = chainCredentials(...providers);
    this.insecure = new Set((opts.insecureRegistries ?? []).map((h) => h.toLowerCase()));
    this.maxManifestBytes = opts.maxManifestBytes ?? 4 << 20;
    this.uploadChunkBytes = opts.uploadChunkBytes ?? 8 << 20;
    const userAgent = opts.userAgent ?? DEFAULT_USER_AGENT;
    const authorizer = new Authorizer({
      credentials,
      fetchToken: (url, headers) =>
        getWithRetries(
          url,
          { 'user-agent': userAgent, ...headers },
          {
            maxAttempts: opts.maxAttempts ?? 4,
            retryBaseDelayMs: opts.retryBaseDelayMs ?? 200,
            what: `token server ${url.origin}`,
          },
        ),
    });
    this.transport = new Transport({
      authorizer,
      maxAttempts: opts.maxAttempts ?? 4,
      retryBaseDelayMs: opts.retryBaseDelayMs ?? 200,
      userAgent,
    });
  }

  private url(repo: Repository, path: string): URL {
    const base = registryBaseUrl(repo.domain, this.insecure);
    return new URL(`/v2/${repo.path}/${path}`, base);
  }

  private send(req: Omit<RegistryRequest, 'host'> & { repo: Repository }): Promise<Response> {
    const { repo, ...rest } = req;
    return this.transport.send({ ...rest, host: repo.domain });
  }

  /**
   * Resolves a tag or digest reference to the descriptor of what it names (an index or a
   * manifest): HEAD first, GET when the registry does not say the digest, media type and size.
   * A tag that does not exist is an `ImageNotFoundError`.
   */
  async resolve(refIn: string | ImageReference): Promise<ResolvedReference> {
    const ref = toReference(refIn);
    if (ref.digest !== undefined && !isDigest(ref.digest)) {
      throw new ManifestInvalidError(`${formatReference(ref)}: only sha256 digests are supported`);
    }
    const what = formatReference(ref);
    const target = ref.digest ?? ref.tag ?? 'latest';
    const url = this.url(ref, `manifests/${target}`);
    const request = (method: 'HEAD' | 'GET', passStatuses?: number[]): Promise<Response> =>
      this.send({
        repo: ref,
        method,
        url,
        scopes: [pullScope(ref)],
        what,
        headers: { accept: MANIFEST_ACCEPT },
        ...(passStatuses ? { passStatuses } : {}),
      });
    // Some registries refuse HEAD on manifests (405/501): fall back to GET as if HEAD said nothing.
    const head = await request('HEAD', [405, 501]);
    await head.body?.cancel();
    const mediaType = head.headers.get('content-type')?.split(';')[0]?.trim();
    const headerDigest = head.headers.get('docker-content-digest') ?? undefined;
    const size = Number(head.headers.get('content-length') ?? NaN);
    const digest =
      ref.digest ??
      (headerDigest !== undefined && isDigest(headerDigest) ? headerDigest : undefined);
    if (
      head.ok &&
      digest !== undefined &&
      mediaType !== undefined &&
      mediaType !== '' &&
      Number.isSafeInteger(size) &&
      size > 0
    ) {
      return { ref: { ...ref, digest }, descriptor: { mediaType, digest, size } };
    }
    // HEAD was not informative enough: GET the manifest and hash it ourselves.
    const res = await request('GET');
    const bytes = await readLimited(res, this.maxManifestBytes, what);
    const actual = sha256Digest(bytes);
    if (ref.digest !== undefined && actual !== ref.digest) {
      throw new DigestMismatchError(ref.digest, actual, { details: { what } });
    }
    const doc = parseManifest(bytes, res.headers.get('content-type') ?? undefined, what);
    const mt = doc.kind === 'index' ? doc.index.mediaType : doc.manifest.mediaType;
    return {
      ref: { ...ref, digest: actual },
      descriptor: { mediaType: mt, digest: actual, size: bytes.length },
    };
  }

  /** Fetches a manifest or index by descriptor, verifies its digest and size, and parses it. */
  async fetchManifest(repo: Repository, desc: Descriptor): Promise<FetchedManifest> {
    const what = `${repo.domain}/${repo.path}@${desc.digest}`;
    if (desc.size > this.maxManifestBytes) {
      throw new ManifestInvalidError(
        `${what}: ${desc.size} bytes is more than the ${this.maxManifestBytes} byte limit`,
      );
    }
    const res = await this.send({
      repo,
      method: 'GET',
      url: this.url(repo, `manifests/${desc.digest}`),
      scopes: [pullScope(repo)],
      what,
      headers: { accept: `${desc.mediaType}, ${MANIFEST_ACCEPT}` },
    });
    const bytes = await readLimited(res, this.maxManifestBytes, what);
    verifyBytes(bytes, desc, what);
    const document = parseManifest(bytes, desc.mediaType, what);
    const docType =
      document.kind === 'index' ? document.index.mediaType : document.manifest.mediaType;
    if (
      docType !== desc.mediaType &&
      (desc.mediaType.includes('manifest') || desc.mediaType.includes('index'))
    ) {
      throw new ManifestInvalidError(
        `${what}: descriptor says ${desc.mediaType}, document is ${docType}`,
      );
    }
    return { descriptor: desc, bytes, document };
  }

  /**
   * Opens a blob for streaming. The stream is verified: it errors with `DigestMismatchError`
   * (or `InvalidBlobError` for a size mismatch) instead of ending when the bytes are wrong, and
   * with a retryable `RegistryUnavailableError` when the connection breaks.
   */
  async fetchBlob(
    repo: Repository,
    desc: Pick<Descriptor, 'digest' | 'size'>,
    opts: FetchBlobOptions = {},
  ): Promise<Readable> {
    const what = `${repo.domain}/${repo.path}@${desc.digest}`;
    const res = await this.send({
      repo,
      method: 'GET',
      url: this.url(repo, `blobs/${desc.digest}`),
      scopes: [pullScope(repo)],
      what,
    });
    if (res.body === null)
      throw new RegistryRequestError(res.status, `${what}: response without a body`);
    const body = Readable.fromWeb(res.body as WebReadableStream<Uint8Array>);
    if (opts.verify === false) {
      const out = new PassThrough();
      body.on('error', (err) => out.destroy(wrapBodyError(err, what)));
      out.on('close', () => {
        if (!body.destroyed) body.destroy();
      });
      return body.pipe(out);
    }
    const verifier = new DigestingStream(desc.digest, desc.size);
    body.on('error', (err) => verifier.destroy(wrapBodyError(err, what)));
    verifier.on('close', () => {
      if (!body.destroyed) body.destroy();
    });
    return body.pipe(verifier);
  }

  /** Reads a (small) blob whole, verified; for image configs. */
  async readBlob(
    repo: Repository,
    desc: Pick<Descriptor, 'digest' | 'size'>,
    limit = this.maxManifestBytes,
  ): Promise<Buffer> {
    const what = `${repo.domain}/${repo.path}@${desc.digest}`;
    if (desc.size > limit)
      throw new ManifestInvalidError(
        `${what}: ${desc.size} bytes is more than the ${limit} byte limit`,
      );
    const res = await this.send({
      repo,
      method: 'GET',
      url: this.url(repo, `blobs/${desc.digest}`),
      scopes: [pullScope(repo)],
      what,
    });
    const bytes = await readLimited(res, limit, what);
    verifyBytes(bytes, desc, what);
    return bytes;
  }

  /** The size of a blob in the repository, or undefined when it is not there. */
  async statBlob(
    repo: Repository,
    digest: Digest,
    scopes = [pullScope(repo)],
  ): Promise<number | undefined> {
    const what = `${repo.domain}/${repo.path}@${digest}`;
    const res = await this.send({
      repo,
      method: 'HEAD',
      url: this.url(repo, `blobs/${digest}`),
      scopes,
      what,
      passStatuses: [404],
    });
    await res.body?.cancel();
    if (res.status === 404) return undefined;
    return Number(res.headers.get('content-length') ?? 0);
  }

  /**
   * POSTs `blobs/uploads/` (with `mount`: a cross-repository mount of `digest` from `from`):
   * 'mounted' on 201, else the upload session's location.
   */
  private async startUpload(
    repo: Repository,
    scopes: string[],
    what: string,
    mount?: { digest: string; from: string },
  ): Promise<URL | 'mounted'> {
    const url = this.url(repo, 'blobs/uploads/');
    if (mount) {
      url.searchParams.set('mount', mount.digest);
      url.searchParams.set('from', mount.from);
    }
    const res = await this.send({
      repo,
      method: 'POST',
      url,
      scopes,
      what,
      headers: { 'content-length': '0' },
    });
    await res.body?.cancel();
    if (mount && res.status === 201) return 'mounted';
    return this.uploadLocation(res, url, what);
  }

  /**
   * Uploads a blob unless the repository already has it: a cross-repo mount from `mountFrom`
   * first (same registry), else a monolithic PUT or chunked PATCHes and a closing PUT. The
   * registry verifies the digest; the upload is also hashed here and refused before the final
   * PUT when it does not match `desc`.
   */
  async pushBlob(
    repo: Repository,
    desc: Pick<Descriptor, 'digest' | 'size'>,
    source: BlobUploadSource,
    opts: PushBlobOptions = {},
  ): Promise<PushBlobResult> {
    const what = `${repo.domain}/${repo.path}@${desc.digest}`;
    const mountFrom = (opts.mountFrom ?? []).filter((r) => r !== repo.path);
    const scopes = [...pushScopes(repo), ...mountFrom.map((r) => `repository:${r}:pull`)];
    if ((await this.statBlob(repo, desc.digest, scopes)) !== undefined)
      return { outcome: 'exists' };

    // One mount attempt (from the first other repository); a 202 opens an upload session instead.
    const from = mountFrom[0];
    const started = await this.startUpload(
      repo,
      scopes,
      what,
      from === undefined ? undefined : { digest: desc.digest, from },
    );
    if (started === 'mounted') return { outcome: 'mounted' };
    let location = started;

    const open = async (): Promise<Readable> =>
      Buffer.isBuffer(source) ? Readable.from([source]) : await source();
    if (!opts.chunked) {
      // One PUT with the whole body, streamed (re-opened if the transport retries), hashed on the
      // way: a source that does not match `desc` aborts the PUT, so the registry never commits it.
      const put = new URL(location);
      put.searchParams.set('digest', desc.digest);
      const headers: Record<string, string> = { 'content-type': 'application/octet-stream' };
      if (Buffer.isBuffer(source)) headers['content-length'] = String(source.length);
      const res = await this.send({
        repo,
        method: 'PUT',
        url: put,
        scopes,
        what,
        body: Buffer.isBuffer(source)
          ? source
          : async () => (await open()).pipe(new DigestingStream(desc.digest, desc.size)),
        headers,
      });
      await res.body?.cancel();
      this.checkPushedDigest(res, desc.digest, what);
      return { outcome: 'uploaded' };
    }

    const verifier = new DigestingStream(desc.digest, desc.size);
    const input = (await open()).pipe(verifier);
    let offset = 0;
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    const flush = async (): Promise<void> => {
      if (pendingBytes === 0) return;
      const chunk = Buffer.concat(pending, pendingBytes);
      pending = [];
      pendingBytes = 0;
      const res = await this.send({
        repo,
        method: 'PATCH',
        url: location,
        scopes,
        what,
        body: chunk,
        headers: {
          'content-type': 'application/octet-stream',
          'content-length': String(chunk.length),
          'content-range': `${offset}-${offset + chunk.length - 1}`,
        },
      });
      await res.body?.cancel();
      if (res.status !== 202)
        throw new RegistryRequestError(
          res.status,
          `${what}: chunk upload answered HTTP ${res.status}`,
        );
      location = this.uploadLocation(res, location, what);
      offset += chunk.length;
    };
    for await (const chunk of input as AsyncIterable<Buffer>) {
      pending.push(chunk);
      pendingBytes += chunk.length;
      if (pendingBytes >= this.uploadChunkBytes) await flush();
    }
    await flush();
    const put = new URL(location);
    put.searchParams.set('digest', desc.digest);
    const res = await this.send({
      repo,
      method: 'PUT',
      url: put,
      scopes,
      what,
      headers: { 'content-length': '0' },
    });
    await res.body?.cancel();
    this.checkPushedDigest(res, desc.digest, what);
    return { outcome: 'uploaded' };
  }

  /** Uploads a manifest or index under `reference` (a tag, or its digest); returns its digest. */
  async pushManifest(
    repo: Repository,
    reference: string,
    bytes: Buffer,
    mediaType: string,
  ): Promise<Digest> {
    const digest = sha256Digest(bytes);
    const what = `${repo.domain}/${repo.path}:${reference}`;
    if (isDigest(reference) && reference !== digest)
      throw new DigestMismatchError(reference, digest, { details: { what } });
    parseManifest(bytes, mediaType, what);
    const res = await this.send({
      repo,
      method: 'PUT',
      url: this.url(repo, `manifests/${reference}`),
      scopes: pushScopes(repo),
      what,
      body: bytes,
      headers: { 'content-type': mediaType },
    });
    await res.body?.cancel();
    this.checkPushedDigest(res, digest, what);
    return digest;
  }

  private uploadLocation(res: Response, base: URL, what: string): URL {
    const loc = res.headers.get('location');
    if (res.status !== 202 || loc === null) {
      throw new RegistryRequestError(
        res.status,
        `${what}: upload session: HTTP ${res.status} without Location`,
      );
    }
    return new URL(loc, base);
  }

  private checkPushedDigest(res: Response, digest: Digest, what: string): void {
    if (res.status !== 201)
      throw new RegistryRequestError(
        res.status,
        `${what}: push answered HTTP ${res.status}, expected 201`,
      );
    const got = res.headers.get('docker-content-digest');
    if (got !== null && got !== digest)
      throw new DigestMismatchError(digest, got, { details: { what } });
  }
}
