/**
 * Attestations as BuildKit v0.11 asks for them: the frontend attributes `attest:provenance` and
 * `attest:sbom` (buildx's `--provenance`, `--sbom`, `--attest type=...`; the value is csv, e.g.
 * `type=provenance,mode=max`), and the SLSA provenance v0.2 predicate BuildKit's solver writes
 * (`solver/llbsolver/provenance`): buildType, invocation (configSource, parameters, environment),
 * materials, metadata (times, completeness, BuildKit's source map and layers in mode=max) and, in
 * mode=max, the build's LLB as `buildConfig`. The worker wraps the predicate into an in-toto
 * statement about the image it assembles (the subject is the image's digest) and attaches it.
 * The SBOM is the worker's (its built-in scanner of the final filesystem, see the worker's
 * `exporters/sbom.ts`): here only the option is checked.
 */
import type { TaskResult } from '@kiln/bus';
import { messageToGoJson, opToGoJson, sha256Digest } from '@kiln/llb';
import type { GoJson } from '@kiln/llb';
import { formatPlatform, pb } from '@kiln/protocol';
import type { Platform } from '@kiln/protocol';
import { imagePurl, toReference } from '@kiln/registry';
import { SolveRequestInvalidError } from '../solver/errors.js';

export const SLSA_PROVENANCE_V02 = 'https://slsa.dev/provenance/v0.2';
export const BUILDKIT_BUILD_TYPE = 'https://mobyproject.org/buildkit@v1';
const BUILDKIT_METADATA = 'https://mobyproject.org/buildkit@v1#metadata';
const BUILDKIT_HERMETIC = 'https://mobyproject.org/buildkit@v1#hermetic';

export interface AttestOptions {
  provenance?: { mode: 'min' | 'max'; builderId: string };
  sbom?: boolean;
}

/** BuildKit's `attestations.Parse`: each `attest:TYPE` attribute's csv fields. */
function fields(v: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const f of v.split(',')) {
    if (f === '') continue;
    const i = f.indexOf('=');
    out.set(i < 0 ? f : f.slice(0, i), i < 0 ? '' : f.slice(i + 1));
  }
  return out;
}

/** The attestations a solve's frontend attributes ask for; a bad one is the caller's error. */
export function parseAttestAttrs(attrs: Readonly<Record<string, string>>): AttestOptions {
  const out: AttestOptions = {};
  for (const [k, v] of Object.entries(attrs)) {
    if (!k.startsWith('attest:')) continue;
    const type = k.slice('attest:'.length).toLowerCase();
    const f = fields(v);
    if (f.get('disabled') === 'true') continue;
    if (type === 'provenance') {
      const mode = f.get('mode') ?? 'max';
      if (mode === 'disabled' || mode === 'none') continue;
      if (!['min', 'max', 'full'].includes(mode))
        throw new SolveRequestInvalidError(
          `attest:provenance: invalid mode ${JSON.stringify(mode)} (want min or max)`,
          { attr: k },
        );
      out.provenance = {
        mode: mode === 'min' ? 'min' : 'max',
        builderId: f.get('builder-id') ?? '',
      };
    } else if (type === 'sbom') {
      const generator = f.get('generator');
      if (generator)
        throw new SolveRequestInvalidError(
          `attest:sbom: generator=${generator}: Kiln does not run scanner images; leave generator out for its built-in scanner (dpkg and apk databases, SPDX 2.3)`,
          { attr: k },
        );
      out.sbom = true;
    } else {
      throw new SolveRequestInvalidError(
        `${k}: unknown attestation type (want provenance or sbom)`,
        { attr: k },
      );
    }
  }
  return out;
}

/** Frontend attributes that describe the host, not the build (BuildKit's `FilterArgs`). */
const HOST_SPECIFIC = new Set(['cgroup-parent', 'image-resolve-mode', 'platform']);

export interface ProvenanceInput {
  mode: 'min' | 'max';
  builderId: string;
  frontend: string;
  attrs: Readonly<Record<string, string>>;
  /** The platform's Definition (its terminal last), with its source map. */
  definition: pb.IDefinition;
  /** The platform the build ran on (BuildKit's `platforms.DefaultSpec()`). */
  buildPlatform: Platform;
  buildId: string;
  startedOn: Date;
  finishedOn: Date;
  /** Every vertex's task result (mode=max: the layers of each step). */
  vertices?: ReadonlyMap<string, TaskResult>;
}

interface Step {
  id: string;
  op: GoJson;
  inputs?: string[];
}

/** BuildKit's `toBuildSteps`: the ops from the terminal, depth first, inputs before users. */
function buildSteps(def: pb.IDefinition | null | undefined): {
  steps: Step[];
  index: Map<string, number>;
} {
  const ops = new Map<string, pb.Op>();
  let last = '';
  for (const b of def?.def ?? []) {
    last = sha256Digest(b);
    ops.set(last, pb.Op.decode(b));
  }
  const order: string[] = [];
  const seen = new Set<string>();
  const walk = (d: string): void => {
    if (seen.has(d)) return;
    const op = ops.get(d);
    if (!op) return;
    seen.add(d);
    for (const inp of op.inputs) walk(inp.digest ?? '');
    order.push(d);
  };
  if (last) walk(last);
  const index = new Map(order.map((d, i) => [d, i]));
  const steps = order.map((d, i): Step => {
    const op = ops.get(d)!;
    const inputs = op.inputs.map(
      (inp) => `step${index.get(inp.digest ?? '')}:${Number(inp.index)}`,
    );
    return {
      id: `step${i}`,
      op: opToGoJson({ ...op, inputs: [] }),
      ...(inputs.length > 0 ? { inputs } : {}),
    };
  });
  return { steps, index };
}

const digestMapping = (index: Map<string, number>): Record<string, string> =>
  Object.fromEntries(
    [...index].sort(([a], [b]) => (a < b ? -1 : 1)).map(([d, i]) => [d, `step${i}`]),
  );

/** The SLSA provenance v0.2 predicate of one platform's build, as BuildKit v0.11.6 writes it. */
export function provenancePredicate(p: ProvenanceInput): Record<string, unknown> {
  const materials: { uri: string; digest: Record<string, string> }[] = [];
  const locals = new Set<string>();
  const secrets = new Map<string, boolean>();
  const ssh = new Map<string, boolean>();
  let incomplete = false;
  let network = false;
  // A Dockerfile frontend read its Dockerfile from the client (BuildKit's `dockerfile` local),
  // and the context's .dockerignore (BuildKit's frontend reads `context` for it, used or not).
  if (p.frontend === 'dockerfile.v0') {
    locals.add('dockerfile');
    if (!p.attrs.context) locals.add('context');
  }
  for (const b of p.definition.def ?? []) {
    const op = pb.Op.decode(b);
    const id = op.source?.identifier ?? '';
    const platform = op.platform
      ? {
          os: op.platform.OS ?? '',
          architecture: op.platform.Architecture ?? '',
          ...(op.platform.Variant ? { variant: op.platform.Variant } : {}),
        }
      : undefined;
    if (id.startsWith('docker-image://')) {
      const ref = toReference(id);
      if (!ref.digest) {
        incomplete = true;
        continue;
      }
      const [alg, hex] = ref.digest.split(':') as [string, string];
      materials.push({
        uri: imagePurl(`${ref.domain}/${ref.path}${ref.tag ? `:${ref.tag}` : ''}`, platform),
        digest: { [alg]: hex },
      });
    } else if (id.startsWith('git://')) {
      // The commit a branch or tag resolved to is the worker's to know: only a pinned commit is
      // a complete material.
      const ref = id.slice('git://'.length).split('#')[1] ?? '';
      if (/^[0-9a-f]{40}$/.test(ref)) {
        const remote = op.source?.attrs?.['git.fullurl'] ?? `https://${id.slice(6).split('#')[0]}`;
        materials.push({ uri: remote, digest: { sha1: ref } });
      } else incomplete = true;
    } else if (id.startsWith('https://') || id.startsWith('http://')) {
      const sum = op.source?.attrs?.['http.checksum'];
      if (sum?.includes(':')) {
        const [alg, hex] = sum.split(':') as [string, string];
        materials.push({ uri: id, digest: { [alg]: hex } });
      } else incomplete = true;
    } else if (id.startsWith('local://')) {
      locals.add(id.slice('local://'.length));
    }
    if (op.exec) {
      if ((op.exec.network ?? pb.NetMode.UNSET) !== pb.NetMode.NONE) network = true;
      for (const m of op.exec.mounts ?? []) {
        if (m.secretOpt?.ID) secrets.set(m.secretOpt.ID, !!m.secretOpt.optional);
        if (m.SSHOpt) ssh.set(m.SSHOpt.ID || 'default', !!m.SSHOpt.optional);
      }
    }
  }
  if (locals.size > 0) incomplete = true;

  const args: Record<string, string> = {};
  const vcs: Record<string, string> = {};
  let parameters = p.frontend !== '';
  for (const [k, v] of Object.entries(p.attrs).sort(([a], [b]) => (a < b ? -1 : 1))) {
    if (HOST_SPECIFIC.has(k) || k.startsWith('attest:')) continue;
    if (k.startsWith('vcs:')) {
      if (v) vcs[k.slice('vcs:'.length)] = v;
      continue;
    }
    if (p.mode === 'min' && (k.startsWith('build-arg:') || k.startsWith('label:'))) {
      parameters = false;
      continue;
    }
    args[k] = v;
  }
  const contextKey = p.attrs.contextkey || 'context';
  const uri = p.attrs[contextKey] || p.attrs[`input:${contextKey}`];
  const byId = (m: Map<string, boolean>) =>
    [...m]
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([id, optional]) => ({
        id,
        ...(optional ? { optional } : {}),
      }));

  const bkMetadata: Record<string, unknown> = {};
  if (Object.keys(vcs).length > 0) bkMetadata.vcs = vcs;
  const predicate: Record<string, unknown> = {
    builder: { id: p.builderId },
    buildType: BUILDKIT_BUILD_TYPE,
    ...(materials.length > 0 ? { materials } : {}),
    invocation: {
      configSource: {
        ...(uri ? { uri } : {}),
        ...(p.attrs.filename ? { entryPoint: p.attrs.filename } : {}),
      },
      parameters: {
        ...(p.frontend ? { frontend: p.frontend } : {}),
        ...(Object.keys(args).length > 0 ? { args } : {}),
        ...(p.mode === 'max' && secrets.size > 0 ? { secrets: byId(secrets) } : {}),
        ...(p.mode === 'max' && ssh.size > 0 ? { ssh: byId(ssh) } : {}),
        ...(locals.size > 0 ? { locals: [...locals].sort().map((name) => ({ name })) } : {}),
      },
      environment: { platform: formatPlatform(p.buildPlatform) },
    },
  };
  if (p.mode === 'max') {
    const { steps, index } = buildSteps(p.definition);
    predicate.buildConfig = { llbDefinition: steps, digestMapping: digestMapping(index) };
    const src = p.definition.Source;
    if (src?.infos?.length) {
      const locations: Record<string, GoJson> = {};
      for (const [d, l] of Object.entries(src.locations ?? {})) {
        const i = index.get(d);
        if (i !== undefined) locations[`step${i}`] = messageToGoJson('pb.Locations', l);
      }
      bkMetadata.source = {
        locations,
        infos: src.infos.map((info) => {
          const inner = info.definition ? buildSteps(info.definition) : undefined;
          return {
            ...(info.filename ? { filename: info.filename } : {}),
            ...(info.language ? { language: info.language } : {}),
            ...(info.data?.length ? { data: Buffer.from(info.data).toString('base64') } : {}),
            ...(inner?.steps.length
              ? { llbDefinition: inner.steps, digestMapping: digestMapping(inner.index) }
              : {}),
          };
        }),
      };
    }
    const layers = stepLayers(index, p.vertices);
    if (Object.keys(layers).length > 0) bkMetadata.layers = layers;
  }
  predicate.metadata = {
    buildInvocationID: p.buildId,
    buildStartedOn: p.startedOn.toISOString(),
    buildFinishedOn: p.finishedOn.toISOString(),
    completeness: { parameters, environment: true, materials: !incomplete },
    reproducible: false,
    [BUILDKIT_METADATA]: bkMetadata,
    ...(!incomplete && !network ? { [BUILDKIT_HERMETIC]: true } : {}),
  };
  return predicate;
}

/**
 * mode=max's `layers`: each step output's layer chain (base first) as descriptors, for the steps
 * whose every layer is a blob in the store (a result no one needed as blobs has none yet).
 */
function stepLayers(
  index: Map<string, number>,
  vertices: ReadonlyMap<string, TaskResult> | undefined,
): Record<string, { mediaType: string; digest: string; size: number }[][]> {
  const out: Record<string, { mediaType: string; digest: string; size: number }[][]> = {};
  for (const [d, i] of [...index].sort(([, a], [, b]) => a - b)) {
    const r = vertices?.get(d);
    (r?.outputs ?? []).forEach((o, n) => {
      const ls = o.layers ?? [];
      if (ls.length === 0 || ls.some((l) => !l.digest)) return;
      out[`step${i}:${n}`] = [
        ls.map((l) => ({
          mediaType: l.mediaType ?? '',
          digest: l.digest ?? '',
          size: Number(l.size ?? 0),
        })),
      ];
    });
  }
  return out;
}

/** The predicate as the worker attaches it. */
export function provenanceAttestation(p: ProvenanceInput): {
  predicateType: string;
  predicate: Uint8Array;
} {
  return {
    predicateType: SLSA_PROVENANCE_V02,
    predicate: Buffer.from(JSON.stringify(provenancePredicate(p))),
  };
}
