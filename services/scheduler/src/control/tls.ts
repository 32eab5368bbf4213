/**
 * TLS for the control API from PEM files that can be replaced while the scheduler runs (a
 * renewed certificate, a rotated client CA): `reload()` reads them again and new connections use
 * them; open connections keep theirs. The service entry reloads on SIGHUP and when a file
 * changes. A reload that fails (a missing or half-written file) keeps the previous certificates.
 */
import { readFile } from 'node:fs/promises';
import * as grpc from '@grpc/grpc-js';
import type { experimental } from '@grpc/grpc-js';

type Provider = experimental.CertificateProvider;
type CaListener = experimental.CaCertificateUpdateListener;
type IdListener = experimental.IdentityCertificateUpdateListener;

export interface TlsFiles {
  /** The server's certificate chain (PEM). */
  cert: string;
  /** Its private key (PEM). */
  key: string;
  /** CA bundle (PEM) client certificates must chain to: mutual TLS. */
  ca?: string;
}

export class TlsFilesProvider implements Provider {
  readonly files: TlsFiles;
  #identity: experimental.IdentityCertificateUpdate | undefined;
  #ca: experimental.CaCertificateUpdate | undefined;
  readonly #caListeners = new Set<CaListener>();
  readonly #idListeners = new Set<IdListener>();

  private constructor(files: TlsFiles) {
    this.files = files;
  }

  /** Reads the files once (failing if any is unreadable) and returns the provider. */
  static async open(files: TlsFiles): Promise<TlsFilesProvider> {
    const p = new TlsFilesProvider(files);
    await p.reload();
    return p;
  }

  /** Reads the files again; listeners (the server) get the new certificates. */
  async reload(): Promise<void> {
    const [certificate, privateKey, caCertificate] = await Promise.all([
      readFile(this.files.cert),
      readFile(this.files.key),
      this.files.ca ? readFile(this.files.ca) : undefined,
    ]);
    this.#identity = { certificate, privateKey };
    for (const l of this.#idListeners) l(this.#identity);
    if (caCertificate) {
      this.#ca = { caCertificate };
      for (const l of this.#caListeners) l(this.#ca);
    }
  }

  /** Server credentials that follow this provider; client certificates required when a CA is set. */
  serverCredentials(): grpc.ServerCredentials {
    const mutual = this.files.ca !== undefined;
    // grpc-js's first parameter is the identity provider, despite its declared name.
    return grpc.experimental.createCertificateProviderServerCredentials(
      this,
      mutual ? this : null,
      mutual,
    );
  }

  // A new listener gets the current certificates asynchronously: grpc-js registers the server's
  // own watcher only after adding its listener, and would miss a synchronous update.
  addCaCertificateListener(l: CaListener): void {
    this.#caListeners.add(l);
    queueMicrotask(() => {
      if (this.#ca && this.#caListeners.has(l)) l(this.#ca);
    });
  }
  removeCaCertificateListener(l: CaListener): void {
    this.#caListeners.delete(l);
  }
  addIdentityCertificateListener(l: IdListener): void {
    this.#idListeners.add(l);
    queueMicrotask(() => {
      if (this.#identity && this.#idListeners.has(l)) l(this.#identity);
    });
  }
  removeIdentityCertificateListener(l: IdListener): void {
    this.#idListeners.delete(l);
  }
}
