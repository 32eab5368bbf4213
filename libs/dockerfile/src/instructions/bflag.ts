/**
 * The `--flag[=value]` words of an instruction (BuildKit's BFlags): each instruction declares the
 * flags it knows, then `parse` checks the words against them. Errors are plain Errors with
 * BuildKit's messages; the instruction parser adds the line range.
 */

import { withSuggestion } from './go-helpers.js';

type FlagType = 'bool' | 'string' | 'strings';

/** One declared flag and, after parse, its value. */
export class Flag {
  value = '';
  stringValues: string[] = [];

  constructor(
    private readonly bf: BFlags,
    readonly name: string,
    readonly type: FlagType,
  ) {}

  /** Whether the flag was given. */
  isUsed(): boolean {
    return this.bf.used.has(this.name);
  }

  /** A bool flag's value. */
  isTrue(): boolean {
    if (this.type !== 'bool')
      throw new Error(`Trying to use IsTrue on a non-boolean: ${this.name}`);
    return this.value === 'true';
  }
}

export class BFlags {
  private readonly flags = new Map<string, Flag>();
  /** @internal names of the flags given. */
  readonly used = new Map<string, Flag>();
  private err: string | undefined;

  constructor(readonly args: readonly string[] = []) {}

  addBool(name: string, def: boolean): Flag {
    const f = this.addFlag(name, 'bool');
    f.value = def ? 'true' : 'false';
    return f;
  }

  addString(name: string, def: string): Flag {
    const f = this.addFlag(name, 'string');
    f.value = def;
    return f;
  }

  addStrings(name: string): Flag {
    return this.addFlag(name, 'strings');
  }

  private addFlag(name: string, type: FlagType): Flag {
    if (this.flags.has(name)) this.err = `Duplicate flag defined: ${name}`;
    const f = new Flag(this, name, type);
    this.flags.set(name, f);
    return f;
  }

  /** The names of the flags given, in the order declared. */
  usedNames(): string[] {
    return [...this.used.keys()];
  }

  /** Checks the words against the declared flags and sets their values; throws on the first error. */
  parse(): void {
    if (this.err !== undefined) throw new Error(`error setting up flags: ${this.err}`);
    for (const a of this.args) {
      // `--` ends the flags (POSIX utility syntax guidelines).
      if (a === '--') return;
      if (!a.startsWith('--')) throw new Error(`arg should start with -- : ${a}`);
      const index = a.indexOf('=');
      const hasValue = index >= 0;
      const flagName = hasValue ? a.slice(0, index) : a;
      const value = hasValue ? a.slice(index + 1) : '';
      const arg = flagName.slice(2);
      const flag = this.flags.get(arg);
      if (!flag) {
        const names = [...this.flags.keys()].map((n) => '--' + n);
        throw new Error(withSuggestion(`unknown flag: ${flagName}`, flagName, names, true));
      }
      if (this.used.has(arg) && flag.type !== 'strings')
        throw new Error(`duplicate flag specified: ${flagName}`);
      this.used.set(arg, flag);
      switch (flag.type) {
        case 'bool': {
          // An empty value is only fine without `=`.
          if (hasValue && value === '') throw new Error(`missing a value on flag: ${flagName}`);
          const lower = value.toLowerCase();
          if (lower === 'true' || lower === '') flag.value = 'true';
          else if (lower === 'false') flag.value = 'false';
          else throw new Error(`expecting boolean value for flag ${flagName}, not: ${value}`);
          break;
        }
        case 'string':
          if (!hasValue) throw new Error(`missing a value on flag: ${flagName}`);
          flag.value = value;
          break;
        case 'strings':
          if (!hasValue) throw new Error(`missing a value on flag: ${flagName}`);
          flag.stringValues.push(value);
          break;
      }
    }
  }
}
