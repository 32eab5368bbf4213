import { pb } from '@kiln/protocol';
import { Definition, parseDefinition } from './definition.js';
import { InvalidDefinitionError } from './errors.js';
import {
  messageFromGoJson,
  messageToGoJson,
  metadataFromGoJson,
  metadataToGoJson,
  opFromGoJson,
  opToGoJson,
  parseGoJson,
  stringifyGoJson,
} from './go-json-pb.js';
import type { GoJson } from './go-json-pb.js';
import { sha256Digest } from './vertex.js';

/**
 * `kiln debug dump-llb`: one JSON object per op of a marshaled Definition, in definition order:
 * `{"digest": ..., "op": <BuildKit Go JSON of the Op>, "metadata": <OpMetadata JSON>}`, plus,
 * where the definition has a source map, the op's `sourceLocations` (and `sourceInfos` on the first
 * line), so that marshal-llb gives back the identical bytes. The definition is validated first, so
 * a malformed one is reported, not dumped.
 */
export function dumpLlb(bytes: Uint8Array): string {
  parseDefinition(bytes);
  const def = Definition.fromBytes(bytes);
  const lines: string[] = [];
  const locations = def.source?.locations ?? {};
  def.def.forEach((b, i) => {
    const digest = sha256Digest(b);
    const line: Record<string, GoJson> = { digest, op: opToGoJson(pb.Op.decode(b)) };
    const md = def.metadata.get(digest);
    if (md) line.metadata = metadataToGoJson(md);
    const loc = locations[digest];
    if (loc) line.sourceLocations = messageToGoJson('pb.Locations', loc);
    if (i === 0 && def.source?.infos?.length) {
      line.sourceInfos = def.source.infos.map((x) => messageToGoJson('pb.SourceInfo', x));
    }
    lines.push(stringifyGoJson(line));
  });
  return lines.map((l) => `${l}\n`).join('');
}

/**
 * `kiln debug marshal-llb`: the inverse of dumpLlb. Reads JSON lines, re-marshals each op, checks
 * that it has the digest the line claims (so a hand edit is noticed), and writes the Definition.
 */
export function marshalLlb(text: string): Uint8Array {
  const def: Uint8Array[] = [];
  const metadata: Record<string, pb.IOpMetadata> = {};
  let source: pb.ISource | undefined;
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '') return;
    const where = `line ${i + 1}`;
    let obj: GoJson;
    try {
      obj = parseGoJson(line);
    } catch (cause) {
      throw new InvalidDefinitionError(
        'LLB_MALFORMED',
        `${where}: not JSON: ${(cause as Error).message}`,
        { cause },
      );
    }
    if (typeof obj !== 'object' || obj === null || Array.isArray(obj) || !('op' in obj)) {
      throw new InvalidDefinitionError('LLB_MALFORMED', `${where}: want an object with "op"`);
    }
    const bytes = pb.Op.encode(opFromGoJson(obj.op)).finish();
    const digest = sha256Digest(bytes);
    if (typeof obj.digest === 'string' && obj.digest !== digest) {
      throw new InvalidDefinitionError(
        'LLB_MALFORMED',
        `${where}: op marshals to ${digest}, not ${obj.digest}`,
      );
    }
    def.push(bytes);
    if (obj.metadata !== undefined && obj.metadata !== null)
      metadata[digest] = metadataFromGoJson(obj.metadata);
    if (obj.sourceLocations !== undefined) {
      source ??= {};
      (source.locations ??= {})[digest] = messageFromGoJson(
        'pb.Locations',
        obj.sourceLocations,
        `${where}.sourceLocations`,
      );
    }
    if (Array.isArray(obj.sourceInfos)) {
      source ??= {};
      source.infos = obj.sourceInfos.map((x, j) =>
        messageFromGoJson('pb.SourceInfo', x, `${where}.sourceInfos[${j}]`),
      );
    }
  });
  const d: pb.IDefinition = { def, metadata };
  if (source) d.Source = source;
  const bytes = pb.Definition.encode(d).finish();
  parseDefinition(bytes);
  return bytes;
}
