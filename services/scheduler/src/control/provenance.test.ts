import { image, local, marshal } from '@kiln/llb';
import { describe, expect, it } from 'vitest';
import { parseAttestAttrs, provenancePredicate } from './provenance.js';
import type { ProvenanceInput } from './provenance.js';

interface Predicate {
  materials?: unknown;
  buildConfig?: {
    llbDefinition: { inputs?: string[] }[];
    digestMapping: Record<string, string>;
  };
  invocation: {
    configSource: unknown;
    parameters: { args?: Record<string, string>; locals?: unknown };
  };
  metadata: { completeness: Record<string, boolean> };
}
const predicate = (i: ProvenanceInput): Predicate => provenancePredicate(i) as unknown as Predicate;

describe('attest attributes', () => {
  it('reads BuildKit mode defaults and refuses what Kiln cannot do', () => {
    expect(parseAttestAttrs({ 'attest:provenance': 'type=provenance' })).toEqual({
      provenance: { mode: 'max', builderId: '' },
    });
    expect(parseAttestAttrs({ 'attest:provenance': 'mode=min', 'attest:sbom': '' })).toEqual({
      provenance: { mode: 'min', builderId: '' },
      sbom: true,
    });
    expect(parseAttestAttrs({ 'attest:provenance': 'mode=disabled' })).toEqual({});
    expect(() => parseAttestAttrs({ 'attest:provenance': 'mode=full-ish' })).toThrow(/mode/);
    expect(() => parseAttestAttrs({ 'attest:sbom': 'generator=x/scanner' })).toThrow(
      /scanner images/,
    );
    expect(() => parseAttestAttrs({ 'attest:vex': '' })).toThrow(/unknown attestation/);
  });
});

describe('the provenance predicate', () => {
  const st = image('docker.io/library/busybox:latest@sha256:' + 'a'.repeat(64), {
    platform: { os: 'linux', architecture: 'arm64' },
  })
    .run({ args: ['true'] })
    .root();
  const def = marshal(st).toProto();
  const input = {
    frontend: 'dockerfile.v0',
    attrs: { 'build-arg:A': '1', 'label:l': 'x', platform: 'linux/arm64', filename: 'Dockerfile' },
    definition: def,
    buildPlatform: { os: 'linux', architecture: 'amd64' },
    buildId: 'b1',
    startedOn: new Date(0),
    finishedOn: new Date(1000),
    builderId: '',
  };

  it('mode=min leaves out build arguments and labels, and says so', () => {
    const p = predicate({ ...input, mode: 'min' });
    expect(p.invocation.parameters.args).toEqual({ filename: 'Dockerfile' });
    expect(p.invocation.configSource).toEqual({ entryPoint: 'Dockerfile' });
    expect(p.metadata.completeness).toEqual({
      parameters: false,
      environment: true,
      materials: false,
    });
    expect(p.materials).toEqual([
      {
        uri: 'pkg:docker/busybox@latest?platform=linux%2Farm64',
        digest: { sha256: 'a'.repeat(64) },
      },
    ]);
    expect(p.buildConfig).toBeUndefined();
  });

  it('mode=max has every argument and the LLB, steps from the terminal', () => {
    const p = predicate({ ...input, mode: 'max' });
    expect(p.invocation.parameters.args?.['build-arg:A']).toBe('1');
    const steps = p.buildConfig!.llbDefinition;
    expect(steps.map((s) => s.inputs ?? [])).toEqual([[], ['step0:0'], ['step1:0']]);
    expect(Object.values(p.buildConfig!.digestMapping).sort()).toEqual(['step0', 'step1', 'step2']);
  });

  it('a local source makes the materials incomplete', () => {
    const d = marshal(local('context')).toProto();
    const p = predicate({ ...input, definition: d, mode: 'min' });
    expect(p.invocation.parameters.locals).toEqual([{ name: 'context' }, { name: 'dockerfile' }]);
    expect(p.metadata.completeness.materials).toBe(false);
  });
});
