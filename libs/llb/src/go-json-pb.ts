/**
 * LLB messages as BuildKit's Go code writes them with encoding/json (the format of
 * `buildctl debug dump-llb` and of the conformance vectors' `ops_json`), and back.
 *
 * Go's rules, which this reproduces from the protobuf descriptor: keys are the proto field names;
 * a oneof is one key named after the oneof in CamelCase (`Op`, `Action`, `User`) holding
 * `{"<member>": value}` or null; zero values are omitted except for BuildKit's index and digest
 * fields (declared without omitempty); int64 are JSON numbers, bytes are base64, enums numbers.
 * Reading back drops zero scalars again, so a dump re-marshals to identical bytes.
 */
import protobuf from 'protobufjs';
import { parse as losslessParse } from 'lossless-json';
import type { pb } from '@kiln/protocol';
import { Long, descriptor, toLong } from '@kiln/protocol';
import { InvalidDefinitionError } from './errors.js';

/** The reflection root of every message, built on first use: ~10 ms a `kiln build` never needs. */
let reflection: protobuf.Root | undefined;
const lookupType = (name: string): protobuf.Type =>
  (reflection ??= protobuf.Root.fromJSON(descriptor)).lookupType(name);
const camel = (s: string): string => protobuf.util.camelCase(s);

/** Fields BuildKit declares without omitempty: they appear in JSON even when zero. */
const ALWAYS: ReadonlySet<string> = new Set([
  'pb.Input.digest',
  'pb.Input.index',
  'pb.Mount.input',
  'pb.Mount.output',
  'pb.FileAction.input',
  'pb.FileAction.secondaryInput',
  'pb.FileAction.output',
  'pb.NamedUserOpt.input',
  'pb.MergeInput.input',
  'pb.LowerDiffInput.input',
  'pb.UpperDiffInput.input',
  'pb.BuildInput.input',
  'pb.BuildOp.builder',
]);

/** A JSON value whose integers may be bigints (int64 beyond 2^53). */
export type GoJson = null | boolean | number | bigint | string | GoJson[] | { [k: string]: GoJson };

const INT64 = new Set(['int64', 'uint64', 'sint64', 'fixed64', 'sfixed64']);
const SCALAR_NUM = new Set([
  'int32',
  'uint32',
  'sint32',
  'fixed32',
  'sfixed32',
  'double',
  'float',
  ...INT64,
]);

function goOneofName(name: string): string {
  return name.replace(/(^|_)([a-z])/g, (_m, _p, c: string) => c.toUpperCase());
}

function int64ToJson(v: unknown): number | bigint {
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return v;
  const l = v as Long;
  const n = l.toNumber();
  return Number.isSafeInteger(n) ? n : BigInt(l.toString());
}

function isZero(field: protobuf.Field, v: unknown): boolean {
  if (v === undefined || v === null) return true;
  if (field.map) return Object.keys(v).length === 0;
  if (field.repeated) return (v as unknown[]).length === 0;
  if (field.resolvedType instanceof protobuf.Type) return false;
  if (v instanceof Uint8Array) return v.length === 0;
  if (typeof v === 'object' && Long.isLong(v)) return v.isZero();
  return v === 0 || v === '' || v === false;
}

function scalarToJson(field: protobuf.Field, v: unknown): GoJson {
  if (field.resolvedType instanceof protobuf.Type)
    return messageToJson(field.resolvedType, v as Record<string, unknown>);
  if (INT64.has(field.type)) return int64ToJson(v);
  if (field.type === 'bytes') return Buffer.from(v as Uint8Array).toString('base64');
  return v as GoJson;
}

function valueToJson(field: protobuf.Field, v: unknown): GoJson {
  if (field.map) {
    const obj = v as Record<string, unknown>;
    const out: Record<string, GoJson> = {};
    for (const k of Object.keys(obj).sort()) out[k] = scalarToJson(field, obj[k]);
    return out;
  }
  if (field.repeated) return (v as unknown[]).map((x) => scalarToJson(field, x));
  return scalarToJson(field, v);
}

function messageToJson(type: protobuf.Type, msg: Record<string, unknown>): GoJson {
  const out: Record<string, GoJson> = {};
  const doneOneofs = new Set<string>();
  for (const field of type.fieldsArray) {
    field.resolve();
    const v = msg[camel(field.name)];
    const oneof = field.partOf;
    if (oneof) {
      if (doneOneofs.has(oneof.name)) continue;
      doneOneofs.add(oneof.name);
      let value: GoJson = null;
      for (const member of oneof.fieldsArray) {
        member.resolve();
        const mv = msg[camel(member.name)];
        if (mv !== undefined && mv !== null) {
          value = { [member.name]: valueToJson(member, mv) };
          break;
        }
      }
      out[goOneofName(oneof.name)] = value;
      continue;
    }
    const always = ALWAYS.has(`${type.fullName.slice(1)}.${field.name}`);
    if (isZero(field, v) && !always) continue;
    out[field.name] =
      v === undefined || v === null ? (INT64.has(field.type) ? 0 : '') : valueToJson(field, v);
  }
  return out;
}

/** An Op as BuildKit's Go JSON. */
export function opToGoJson(op: pb.IOp): GoJson {
  return messageToJson(lookupType('pb.Op'), op as Record<string, unknown>);
}

/** OpMetadata as BuildKit's Go JSON. */
export function metadataToGoJson(m: pb.IOpMetadata): GoJson {
  return messageToJson(lookupType('pb.OpMetadata'), m as Record<string, unknown>);
}

function fail(path: string, why: string): never {
  throw new InvalidDefinitionError('LLB_MALFORMED', `${path}: ${why}`);
}

function scalarFromJson(field: protobuf.Field, v: GoJson, path: string): unknown {
  if (field.resolvedType instanceof protobuf.Type)
    return messageFromJson(field.resolvedType, v, path);
  if (field.resolvedType instanceof protobuf.Enum) {
    if (typeof v === 'string' && v in field.resolvedType.values)
      return field.resolvedType.values[v];
    if (typeof v !== 'number' || !Number.isInteger(v)) fail(path, 'expected an enum number');
    return v;
  }
  if (INT64.has(field.type)) {
    if (typeof v !== 'number' && typeof v !== 'bigint') fail(path, 'expected an integer');
    if (typeof v === 'number' && !Number.isInteger(v)) fail(path, 'expected an integer');
    return toLong(v);
  }
  if (SCALAR_NUM.has(field.type)) {
    if (typeof v !== 'number') fail(path, 'expected a number');
    return v;
  }
  if (field.type === 'bool') {
    if (typeof v !== 'boolean') fail(path, 'expected a boolean');
    return v;
  }
  if (field.type === 'string') {
    if (typeof v !== 'string') fail(path, 'expected a string');
    return v;
  }
  if (field.type === 'bytes') {
    if (typeof v !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(v)) fail(path, 'expected base64');
    return new Uint8Array(Buffer.from(v, 'base64'));
  }
  return fail(path, `unsupported field type ${field.type}`);
}

function isZeroJson(v: GoJson): boolean {
  return v === null || v === 0 || v === 0n || v === '' || v === false;
}

function fieldFromJson(field: protobuf.Field, v: GoJson, path: string): unknown {
  if (field.map) {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(path, 'expected an object');
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = scalarFromJson(field, x, `${path}.${k}`);
    return out;
  }
  if (field.repeated) {
    if (!Array.isArray(v)) fail(path, 'expected an array');
    return v.map((x, i) => scalarFromJson(field, x, `${path}[${i}]`));
  }
  return scalarFromJson(field, v, path);
}

function messageFromJson(type: protobuf.Type, json: GoJson, path: string): Record<string, unknown> {
  if (typeof json !== 'object' || json === null || Array.isArray(json))
    fail(path, 'expected an object');
  const out: Record<string, unknown> = {};
  const oneofs = new Map(type.oneofsArray.map((o) => [goOneofName(o.name), o] as const));
  for (const [key, v] of Object.entries(json)) {
    const oneof = oneofs.get(key);
    if (oneof) {
      if (v === null) continue;
      if (typeof v !== 'object' || Array.isArray(v))
        fail(`${path}.${key}`, 'expected an object or null');
      const entries = Object.entries(v);
      if (entries.length !== 1) fail(`${path}.${key}`, 'a oneof holds exactly one member');
      const [name, mv] = entries[0]!;
      const member = oneof.fieldsArray.find((f) => f.name === name);
      if (!member) fail(`${path}.${key}`, `unknown member ${name}`);
      member.resolve();
      // A oneof member is on the wire even when zero (UserOpt.byID 0 is root).
      out[camel(member.name)] = fieldFromJson(member, mv, `${path}.${key}.${name}`);
      continue;
    }
    const field = type.fields[key];
    if (!field) fail(path, `unknown field ${JSON.stringify(key)} in ${type.fullName.slice(1)}`);
    field.resolve();
    if (v === null) continue;
    const isMessage = field.resolvedType instanceof protobuf.Type && !field.map && !field.repeated;
    if (!isMessage && !field.map && !field.repeated && isZeroJson(v)) continue;
    const value = fieldFromJson(field, v, `${path}.${key}`);
    if (
      (field.map && Object.keys(value as object).length === 0) ||
      (field.repeated && (value as unknown[]).length === 0)
    )
      continue;
    out[camel(field.name)] = value;
  }
  return out;
}

/** Reads an Op from BuildKit's Go JSON; typed error on anything that is not one. */
export function opFromGoJson(json: GoJson): pb.IOp {
  return messageFromJson(lookupType('pb.Op'), json, 'op');
}

export function metadataFromGoJson(json: GoJson): pb.IOpMetadata {
  return messageFromJson(lookupType('pb.OpMetadata'), json, 'metadata');
}

/** Parses JSON text keeping int64 precision (integers beyond 2^53 become bigints). */
export function parseGoJson(text: string): GoJson {
  return losslessParse(text, null, (s: string) => {
    if (/^-?\d+$/.test(s)) {
      const n = Number(s);
      return Number.isSafeInteger(n) ? n : BigInt(s);
    }
    return Number(s);
  }) as GoJson;
}

/** Serializes JSON with bigints as plain integers. */
export function stringifyGoJson(v: GoJson): string {
  if (v === null) return 'null';
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'number' || typeof v === 'boolean') return JSON.stringify(v);
  if (typeof v === 'string') return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(stringifyGoJson).join(',')}]`;
  return `{${Object.entries(v)
    .map(([k, x]) => `${JSON.stringify(k)}:${stringifyGoJson(x)}`)
    .join(',')}}`;
}

/** Any LLB message (by full name, e.g. `pb.Locations`) as Go JSON. */
export function messageToGoJson(typeName: string, msg: object): GoJson {
  return messageToJson(lookupType(typeName), msg as Record<string, unknown>);
}

export function messageFromGoJson(
  typeName: string,
  json: GoJson,
  path = typeName,
): Record<string, unknown> {
  return messageFromJson(lookupType(typeName), json, path);
}
