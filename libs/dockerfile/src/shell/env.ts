/**
 * Where the shell lexer looks variables up. Keys compare exactly (BuildKit's `EqualEnvKeys` on a
 * Linux target); a later `KEY=...` in a list overrides an earlier one.
 */
export interface EnvGetter {
  get(key: string): string | undefined;
  keys(): string[];
}

/** What the lexer accepts as an environment. */
export type EnvLike =
  EnvGetter | readonly string[] | ReadonlyMap<string, string> | Record<string, string>;

/** BuildKit's `BuildEnvs`: `KEY=value` entries (a bare `KEY` is empty), later entries override. */
export function envFromList(env: readonly string[]): EnvGetter {
  const m = new Map<string, string>();
  for (const e of env) {
    const i = e.indexOf('=');
    if (i < 0) m.set(e, '');
    else m.set(e.slice(0, i), e.slice(i + 1));
  }
  return envFromMap(m);
}

/** An environment over a map. */
export function envFromMap(m: ReadonlyMap<string, string>): EnvGetter {
  return { get: (k) => m.get(k), keys: () => [...m.keys()] };
}

/** The empty environment. */
export const emptyEnv: EnvGetter = { get: () => undefined, keys: () => [] };

function isEnvGetter(env: EnvLike): env is EnvGetter {
  return (
    typeof (env as Partial<EnvGetter>).get === 'function' &&
    typeof (env as Partial<EnvGetter>).keys === 'function' &&
    !(env instanceof Map)
  );
}

/** Normalises any accepted environment into an EnvGetter. */
export function toEnvGetter(env: EnvLike): EnvGetter {
  if (Array.isArray(env)) return envFromList(env as readonly string[]);
  if (env instanceof Map) return envFromMap(env as ReadonlyMap<string, string>);
  if (isEnvGetter(env)) return env;
  const rec = env as Record<string, string>;
  return envFromMap(new Map(Object.entries(rec)));
}
