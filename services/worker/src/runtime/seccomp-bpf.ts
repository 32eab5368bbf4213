import { createHash } from 'node:crypto';
import type { OciSeccomp } from './seccomp.js';

/** crun's annotation that loads a raw seccomp filter instead of compiling `linux.seccomp`. */
export const SECCOMP_BPF_ANNOTATION = 'run.oci.seccomp_bpf_data';

/**
 * Seccomp filters compiled once per process and handed to later runs ready-made (what podman
 * does with crun): crun otherwise compiles Docker's whole profile with libseccomp at every
 * container start, 15-40 ms of each RUN on these machines, and its own cache is off in Debian's
 * build. The filter is crun's own output for the same profile (see `OciRuntime`), so a run
 * with it is filtered exactly as with the profile. A profile whose compile failed is passed as
 * it is (the run is filtered all the same, only slower); `failure` says why.
 *
 * Safe to use concurrently: one compile per distinct profile, shared by its waiters.
 */
export class SeccompBpfCache {
  readonly #compiled = new Map<string, Promise<string | undefined>>();
  /** Why the last compile failed, if one did. */
  failure: string | undefined;

  /** `compile` returns the raw filter (struct sock_filter[]) of a profile. */
  constructor(private readonly compile: (seccomp: OciSeccomp) => Promise<Buffer>) {}

  /** The base64 filter of `seccomp`, compiled on the first ask; undefined when that failed. */
  get(seccomp: OciSeccomp): Promise<string | undefined> {
    const key = createHash('sha256').update(JSON.stringify(seccomp)).digest('hex');
    let p = this.#compiled.get(key);
    if (p === undefined) {
      p = this.compile(seccomp)
        .then((bpf) => {
          // A classic BPF program is a non-empty array of 8-byte instructions.
          if (bpf.length === 0 || bpf.length % 8 !== 0)
            throw new Error(`the compiled filter has ${bpf.length} bytes`);
          return bpf.toString('base64');
        })
        .catch((err: unknown) => {
          this.failure = err instanceof Error ? err.message : String(err);
          return undefined;
        });
      this.#compiled.set(key, p);
    }
    return p;
  }

  /** How many profiles have a compiled filter (for tests). */
  async size(): Promise<number> {
    const all = await Promise.all(this.#compiled.values());
    return all.filter((b) => b !== undefined).length;
  }
}
