/**
 * The `--flag[=value]` words of an instruction (BuildKit's BFlags): each instruction declares the
 * flags it knows, then `parse` checks the words against them. Errors are plain Errors with
 * BuildKit's messages; the instruction parser adds the line range.
 */

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
    for (let arg of this.args) {
      if (!arg.startsWith('--')) throw new Error(`arg should start with -- : ${arg}`);
      if (arg === '--') return;
      arg = arg.slice(2);
      let value = '';
      const index = arg.indexOf('=');
      if (index >= 0) {
        value = arg.slice(index + 1);
        arg = arg.slice(0, index);
      }
      const flag = this.flags.get(arg);
      if (!flag) throw new Error(`unknown flag: ${arg}`);
      if (this.used.has(arg) && flag.type !== 'strings')
        throw new Error(`duplicate flag specified: ${arg}`);
      this.used.set(arg, flag);
      switch (flag.type) {
        case 'bool': {
          if (index >= 0 && value === '') throw new Error(`missing a value on flag: ${arg}`);
          const lower = value.toLowerCase();
          if (lower === '') flag.value = 'true';
          else if (lower === 'true' || lower === 'false') flag.value = lower;
          else throw new Error(`expecting boolean value for flag ${arg}, not: ${value}`);
          break;
        }
        case 'string':
          if (index < 0) throw new Error(`missing a value on flag: ${arg}`);
          flag.value = value;
          break;
        case 'strings':
          if (index < 0) throw new Error(`missing a value on flag: ${arg}`);
          flag.stringValues.push(value);
          break;
      }
    }
  }
}
