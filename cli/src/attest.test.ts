import { describe, expect, it } from 'vitest';
import { BuildOptionError, attestAttrs, parseOutput } from './build-options.js';

describe('--attest, --provenance, --sbom', () => {
  it("become buildx's attest:TYPE attributes", () => {
    expect(attestAttrs([], 'mode=max', 'true')).toEqual({
      'attest:provenance': 'type=provenance,mode=max',
      'attest:sbom': 'type=sbom',
    });
    expect(
      attestAttrs(['type=provenance,mode=min,builder-id=https://ci'], undefined, undefined),
    ).toEqual({
      'attest:provenance': 'type=provenance,mode=min,builder-id=https://ci',
    });
    expect(attestAttrs([], 'false', undefined)).toEqual({});
    expect(attestAttrs(['type=sbom,disabled=true'], undefined, undefined)).toEqual({});
  });

  it('refuses what buildx refuses', () => {
    expect(() => attestAttrs(['mode=max'], undefined, undefined)).toThrow(BuildOptionError);
    expect(() => attestAttrs(['type=vex'], undefined, undefined)).toThrow(/provenance or sbom/);
    expect(() => attestAttrs(['type=provenance'], 'mode=min', undefined)).toThrow(/duplicate/);
  });

  it('image outputs carry rewrite-timestamp and source-date-epoch', () => {
    expect(parseOutput('type=oci,dest=a.tar,rewrite-timestamp=true,compression=gzip')).toEqual({
      type: 'oci',
      dest: 'a.tar',
      attrs: { 'rewrite-timestamp': 'true' },
    });
    expect(parseOutput('type=registry,name=r/a:1,source-date-epoch=5')).toEqual({
      type: 'image',
      name: 'r/a:1',
      attrs: { 'source-date-epoch': '5' },
    });
  });
});
