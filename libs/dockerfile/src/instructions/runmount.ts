/**
 * `RUN --mount=...` (BuildKit's `commands_runmount.go`): the CSV value, its keys, defaults and
 * validation. Expansion happens at conversion: `parseMount(value)` without an expander only checks
 * what BuildKit checks at parse time (`from` takes no variables); `parseMount(value, expand)`
 * parses and validates everything.
 */
import {
  parseGoBool,
  parseUint32,
  ramInBytes,
  readCsvRecord,
  withSuggestion,
} from './go-helpers.js';

export type MountType = 'bind' | 'cache' | 'tmpfs' | 'secret' | 'ssh';
export type ShareMode = 'shared' | 'private' | 'locked';

const MOUNT_TYPES: readonly MountType[] = ['bind', 'cache', 'tmpfs', 'secret', 'ssh'];
const SHARE_MODES: readonly ShareMode[] = ['shared', 'private', 'locked'];

/** One `--mount`. */
export interface Mount {
  type: MountType;
  /** A stage, an image or `scratch`; empty means the build context (bind) or scratch (cache). */
  from: string;
  source: string;
  target: string;
  readOnly: boolean;
  /** `id`: the cache id, or the secret / ssh id. */
  cacheId: string;
  cacheSharing: ShareMode | '';
  required: boolean;
  /** Secret exposed as this environment variable (`env=`). */
  env: string | undefined;
  /** tmpfs size in bytes, 0 for the default. */
  sizeLimit: number;
  mode: number | undefined;
  uid: number | undefined;
  gid: number | undefined;
}

/** Expands one word against the stage environment (throws on `${x:?msg}`). */
export type SingleWordExpander = (word: string) => string;

const ALL_KEYS = [
  'type',
  'from',
  'source',
  'target',
  'readonly',
  'id',
  'sharing',
  'required',
  'mode',
  'uid',
  'gid',
  'src',
  'dst',
  'destination',
  'ro',
  'rw',
  'readwrite',
  'size',
  'env',
];

/** Parses one `--mount` value; throws Error with BuildKit's message. */
export function parseMount(val: string, expander?: SingleWordExpander): Mount {
  let fields: string[];
  try {
    fields = readCsvRecord(val);
  } catch (err) {
    throw new Error(`failed to parse csv mounts: ${(err as Error).message}`, { cause: err });
  }
  const m: Mount = {
    type: 'bind',
    from: '',
    source: '',
    target: '',
    readOnly: false,
    cacheId: '',
    cacheSharing: '',
    required: false,
    env: undefined,
    sizeLimit: 0,
    mode: undefined,
    uid: undefined,
    gid: undefined,
  };
  let roAuto = true;
  for (const field of fields) {
    const eq = field.indexOf('=');
    const ok = eq >= 0;
    const key = (ok ? field.slice(0, eq) : field).toLowerCase();
    let value = ok ? field.slice(eq + 1) : '';
    if (!ok) {
      if (expander === undefined) continue; // evaluated later
      switch (key) {
        case 'readonly':
        case 'ro':
          m.readOnly = true;
          roAuto = false;
          continue;
        case 'readwrite':
        case 'rw':
          m.readOnly = false;
          roAuto = false;
          continue;
        case 'required':
          if (m.type === 'secret' || m.type === 'ssh') {
            m.required = true;
            continue;
          }
          throw new Error(`unexpected key '${key}' for mount type '${m.type}'`);
        default:
          throw new Error(`invalid field '${field}' must be a key=value pair`);
      }
    }
    if (expander !== undefined) {
      value = expander(value);
    } else if (key === 'from') {
      if (/\$./.test(value))
        throw new Error(`'${key}' doesn't support variable expansion, define alias stage instead`);
    } else {
      continue;
    }
    const bool = (): boolean => {
      try {
        return parseGoBool(value);
      } catch (err) {
        throw new Error(`invalid value for ${key}: ${value}`, { cause: err });
      }
    };
    switch (key) {
      case 'type': {
        const v = value.toLowerCase() as MountType;
        if (!MOUNT_TYPES.includes(v)) {
          throw new Error(
            withSuggestion(
              `unsupported mount type ${JSON.stringify(value)}`,
              value,
              MOUNT_TYPES,
              true,
            ),
          );
        }
        m.type = v;
        break;
      }
      case 'from':
        m.from = value;
        break;
      case 'source':
      case 'src':
        m.source = value;
        break;
      case 'target':
      case 'dst':
      case 'destination':
        m.target = value;
        break;
      case 'readonly':
      case 'ro':
        m.readOnly = bool();
        roAuto = false;
        break;
      case 'readwrite':
      case 'rw':
        m.readOnly = !bool();
        roAuto = false;
        break;
      case 'required':
        if (m.type !== 'secret' && m.type !== 'ssh')
          throw new Error(`unexpected key '${key}' for mount type '${m.type}'`);
        m.required = bool();
        break;
      case 'size':
        if (m.type !== 'tmpfs')
          throw new Error(`unexpected key '${key}' for mount type '${m.type}'`);
        try {
          m.sizeLimit = ramInBytes(value);
        } catch (err) {
          throw new Error(`invalid value for ${key}: ${value}`, { cause: err });
        }
        break;
      case 'id':
        m.cacheId = value;
        break;
      case 'sharing': {
        const v = value.toLowerCase() as ShareMode;
        if (!SHARE_MODES.includes(v)) {
          throw new Error(
            withSuggestion(
              `unsupported sharing value ${JSON.stringify(value)}`,
              value,
              SHARE_MODES,
              true,
            ),
          );
        }
        m.cacheSharing = v;
        break;
      }
      case 'mode': {
        const mode = parseUint32(value, 8);
        if (mode === undefined) throw new Error(`invalid value ${value} for mode`);
        m.mode = mode;
        break;
      }
      case 'uid': {
        const uid = parseUint32(value, 10);
        if (uid === undefined) throw new Error(`invalid value ${value} for uid`);
        m.uid = uid;
        break;
      }
      case 'gid': {
        const gid = parseUint32(value, 10);
        if (gid === undefined) throw new Error(`invalid value ${value} for gid`);
        m.gid = gid;
        break;
      }
      case 'env':
        m.env = value;
        break;
      default:
        throw new Error(
          withSuggestion(`unexpected key '${key}' in '${field}'`, key, ALL_KEYS, true),
        );
    }
  }
  validateMount(m, roAuto);
  return m;
}

function validateMount(m: Mount, roAuto: boolean): void {
  const fileInfoAllowed = m.type === 'secret' || m.type === 'ssh' || m.type === 'cache';
  if (!fileInfoAllowed) {
    if (m.mode !== undefined)
      throw new Error(`mode not allowed for ${JSON.stringify(m.type)} type mounts`);
    if (m.uid !== undefined)
      throw new Error(`uid not allowed for ${JSON.stringify(m.type)} type mounts`);
    if (m.gid !== undefined)
      throw new Error(`gid not allowed for ${JSON.stringify(m.type)} type mounts`);
  }
  if (roAuto) m.readOnly = !(m.type === 'cache' || m.type === 'tmpfs');
  if (m.type === 'secret') {
    if (m.from !== '') throw new Error('secret mount should not have a from');
    if (m.cacheSharing !== '') throw new Error('secret mount should not define sharing');
    if (m.source === '' && m.target === '' && m.cacheId === '' && m.env === undefined) {
      throw new Error('invalid secret mount. one of source, target required');
    }
    if (m.source !== '' && m.cacheId !== '') throw new Error("both source and id can't be set");
  }
  if (m.env !== undefined && m.type !== 'secret')
    throw new Error(`unexpected key 'env' for mount type '${m.type}'`);
  if (m.cacheSharing !== '' && m.type !== 'cache')
    throw new Error(`invalid cache sharing set for ${m.type} mount`);
}
