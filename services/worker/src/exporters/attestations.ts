/**
 * In-toto attestations attached to an image as BuildKit v0.11 does (its image writer's
 * `commitAttestationsManifest`): the statements about one platform's image become the layers
 * (`application/vnd.in-toto+json`, annotated with their predicate type) of an *attestation
 * manifest* whose config is an `unknown/unknown` image config; the index lists it after every
 * platform's image, with platform `unknown/unknown` and the annotations
 * `vnd.docker.reference.type: attestation-manifest` and `vnd.docker.reference.digest: <image>`.
 * The statement's subject is the image manifest's digest, named by each image name as a package
 * URL (`pkg:docker/NS/NAME@TAG?platform=OS%2FARCH`); an image without a name has none (v0.11.6).
 */
import { createHash } from 'node:crypto';
import { imagePurl } from '@kiln/registry';

export const INTOTO_MEDIA_TYPE = 'application/vnd.in-toto+json';
export const INTOTO_STATEMENT_TYPE = 'https://in-toto.io/Statement/v0.1';
export const ATTESTATION_PLATFORM = { architecture: 'unknown', os: 'unknown' } as const;
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';

/** One predicate to state about an image (its subject is added here). */
export interface Predicate {
  predicateType: string;
  /** The predicate, as JSON. */
  predicate: Buffer;
}

/** An attestation manifest and the blobs it names (all small: JSON held in memory). */
export interface BuiltAttestation {
  manifest: Buffer;
  manifestDigest: string;
  config: Buffer;
  configDigest: string;
  layers: { digest: string; data: Buffer }[];
  /** The digest of the image manifest the statements are about. */
  refersTo: string;
}

const digestOf = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** The in-toto subjects of an image: one per name (none for an image without a name, as BuildKit v0.11). */
export function subjectsOf(
  names: readonly string[],
  platform: { os: string; architecture: string; variant?: string } | undefined,
  manifestDigest: string,
): { name: string; digest: Record<string, string> }[] {
  const [alg, hex] = manifestDigest.split(':') as [string, string];
  const digest = { [alg]: hex };
  return names.filter(Boolean).map((n) => ({ name: imagePurl(n, platform), digest }));
}

/** The attestation manifest of `predicates` about the image whose manifest is `manifestDigest`. */
export function buildAttestation(
  predicates: readonly Predicate[],
  subject: { name: string; digest: Record<string, string> }[],
  manifestDigest: string,
): BuiltAttestation {
  const layers = predicates.map((p) => {
    // Field order as BuildKit's Go struct marshals it; the predicate's own bytes kept.
    const data = Buffer.from(
      `{"_type":${JSON.stringify(INTOTO_STATEMENT_TYPE)},"predicateType":${JSON.stringify(p.predicateType)},"subject":${JSON.stringify(subject)},"predicate":${p.predicate.toString('utf8')}}`,
    );
    return { digest: digestOf(data), data, predicateType: p.predicateType };
  });
  const config = Buffer.from(
    JSON.stringify({
      ...ATTESTATION_PLATFORM,
      config: {},
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) },
    }),
  );
  const manifest = Buffer.from(
    JSON.stringify({
      mediaType: OCI_MANIFEST,
      schemaVersion: 2,
      config: { mediaType: OCI_CONFIG, digest: digestOf(config), size: config.length },
      layers: layers.map((l) => ({
        mediaType: INTOTO_MEDIA_TYPE,
        digest: l.digest,
        size: l.data.length,
        annotations: { 'in-toto.io/predicate-type': l.predicateType },
      })),
    }),
  );
  return {
    manifest,
    manifestDigest: digestOf(manifest),
    config,
    configDigest: digestOf(config),
    layers: layers.map(({ digest, data }) => ({ digest, data })),
    refersTo: manifestDigest,
  };
}

/** The index entry of an attestation manifest. */
export function attestationDescriptor(a: BuiltAttestation): Record<string, unknown> {
  return {
    mediaType: OCI_MANIFEST,
    digest: a.manifestDigest,
    size: a.manifest.length,
    annotations: {
      'vnd.docker.reference.digest': a.refersTo,
      'vnd.docker.reference.type': 'attestation-manifest',
    },
    platform: { ...ATTESTATION_PLATFORM },
  };
}
