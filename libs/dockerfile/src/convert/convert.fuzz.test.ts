// Never a raw crash from conversion either: mutated Dockerfiles (every instruction and flag) either
// convert and marshal, or fail with a DockerfileError. Seeded, so failures reproduce.
import { describe, expect, it } from 'vitest';
import { DockerfileError } from '../dockerfile-error.js';
import { LAYER } from '../test-support/llb-inspect.js';
import { convertDockerfileSync, marshalResult } from './convert.js';

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const CORPUS = [
  'ARG IMG=busybox\nFROM ${IMG} AS base\nARG V=1\nENV A=$V B="x y"\nWORKDIR /app\nUSER 1000:1000\nRUN --mount=type=cache,target=/c,sharing=locked echo $A\n',
  'FROM busybox AS a\nRUN --mount=type=secret,id=s,env=S --mount=type=ssh,required true\nFROM a\nCOPY --from=a --chown=1:1 --chmod=0644 /x /y/\nCOPY --link --parents ./a/./b /c/\n',
  'FROM --platform=$BUILDPLATFORM busybox\nARG TARGETARCH\nADD https://example.com/f.tgz /f/\nADD --keep-git-dir https://github.com/a/b.git#main:sub /s\nADD x.tar.gz /\n',
  'FROM busybox\nSHELL ["/bin/bash", "-c"]\nRUN <<EOF\n#!/bin/sh\necho hi\nEOF\nCOPY <<-EOT /etc/x\n\t$HOME\n\tEOT\n',
  'FROM busybox\nHEALTHCHECK --interval=5s --retries=2 CMD true\nEXPOSE 80 443/udp\nVOLUME /v\nSTOPSIGNAL SIGTERM\nLABEL a=b\nCMD ["x"]\nENTRYPOINT sh\nONBUILD RUN x\nMAINTAINER m\n',
  'FROM busybox\nRUN ["true"]\nCMD []\nENTRYPOINT []\n',
  'FROM scratch\nCOPY --exclude=*.md . /\nRUN --network=none --security=insecure --mount=type=tmpfs,target=/t,size=1m --mount=type=bind,from=busybox,target=/b true\n',
];

const PIECES = [
  ' ',
  '\n',
  '$',
  '${',
  '}',
  ':?',
  ':-',
  '"',
  "'",
  '\\',
  '--',
  '=',
  ',',
  '/',
  '.',
  '*',
  '[',
  ']',
  '<<',
  'EOF',
  'FROM ',
  'RUN ',
  'COPY ',
  'ADD ',
  'ARG ',
  'ENV ',
  'WORKDIR ',
  'USER ',
  '--mount=',
  'type=',
  'cache',
  'secret',
  'ssh',
  'tmpfs',
  'bind',
  'from=',
  'target=',
  'id=',
  '--from=',
  '--link',
  '--chmod=',
  '--chown=',
  '--platform=',
  'linux/arm64',
  'AS ',
  'scratch',
  '0',
  '9',
  'Z',
  'é',
  '--parents',
  'https://',
  '.git',
  '#',
  '[]',
  '["a"]',
];

function mutate(rnd: () => number, text: string): string {
  let s = text;
  const rounds = 1 + Math.floor(rnd() * 5);
  for (let r = 0; r < rounds; r++) {
    const pos = Math.floor(rnd() * (s.length + 1));
    const op = Math.floor(rnd() * 3);
    if (op === 0) s = s.slice(0, pos) + PIECES[Math.floor(rnd() * PIECES.length)]! + s.slice(pos);
    else if (op === 1) s = s.slice(0, pos) + s.slice(pos + 1 + Math.floor(rnd() * 6));
    else {
      const lines = s.split('\n');
      const i = Math.floor(rnd() * lines.length);
      const j = Math.floor(rnd() * lines.length);
      [lines[i], lines[j]] = [lines[j]!, lines[i]!];
      s = lines.join('\n');
    }
  }
  return s;
}

describe('conversion fuzz', () => {
  it('converts or fails with a DockerfileError, never anything else', () => {
    const rnd = mulberry32(20261128);
    const failures: string[] = [];
    let converted = 0;
    for (let i = 0; i < 600; i++) {
      const text = mutate(rnd, CORPUS[i % CORPUS.length]!);
      try {
        const r = convertDockerfileSync(text, {
          targetPlatform: { os: 'linux', architecture: 'amd64' },
          buildArgs: i % 3 === 0 ? { V: '2', IMG: 'busybox' } : {},
          metaResolver: (ref) => ({
            ref,
            config: {
              architecture: 'amd64',
              os: 'linux',
              rootfs: { type: 'layers', diff_ids: [LAYER] },
              config: { OnBuild: i % 5 === 0 ? ['RUN echo trigger'] : [] },
            },
          }),
        });
        marshalResult(r, { localUniqueId: 'fuzz', sourceMapFilename: 'Dockerfile' });
        converted++;
      } catch (err) {
        if (!(err instanceof DockerfileError))
          failures.push(`${JSON.stringify(text)}: ${String(err)}`);
      }
    }
    expect(failures).toEqual([]);
    // The mutations are mild enough that many still convert: the test exercises the converter.
    expect(converted).toBeGreaterThan(100);
  });
});
