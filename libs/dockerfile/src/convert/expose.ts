/** EXPOSE port specs (docker/go-connections nat.ParsePortSpecs, as BuildKit uses it). */

const PROTOS = new Set(['tcp', 'udp', 'sctp']);

function parsePort(raw: string): number {
  if (!/^[0-9]+$/.test(raw)) throw new Error(`invalid containerPort: ${raw}`);
  const n = Number(raw);
  if (n > 65535) throw new Error(`invalid containerPort: ${raw}`);
  return n;
}

/** The set of `port/proto` keys a list of EXPOSE values stands for (ranges expanded). */
export function parsePortSpecs(specs: readonly string[]): string[] {
  const out = new Set<string>();
  for (const raw of specs) {
    let spec = raw;
    let proto = 'tcp';
    const slash = spec.lastIndexOf('/');
    if (slash >= 0) {
      proto = spec.slice(slash + 1).toLowerCase();
      spec = spec.slice(0, slash);
      if (!PROTOS.has(proto)) throw new Error(`invalid proto: ${proto}`);
    }
    // ip:hostPort:containerPort or hostPort:containerPort: only the container port is exposed.
    const parts = spec.split(':');
    const container = parts[parts.length - 1]!;
    const dash = container.indexOf('-');
    if (dash >= 0) {
      const start = parsePort(container.slice(0, dash));
      const end = parsePort(container.slice(dash + 1));
      if (end < start) throw new Error(`invalid range specified for container port: ${container}`);
      for (let p = start; p <= end; p++) out.add(`${p}/${proto}`);
    } else {
      out.add(`${parsePort(container)}/${proto}`);
    }
  }
  return [...out];
}

/** Go's `%v` of a `map[nat.Port]struct{}`: keys sorted as strings. */
export function formatPortMap(ports: readonly string[]): string {
  return (
    'map[' +
    [...ports]
      .sort()
      .map((p) => `${p}:{}`)
      .join(' ') +
    ']'
  );
}

const SIGNALS = [
  'ABRT',
  'ALRM',
  'BUS',
  'CHLD',
  'CLD',
  'CONT',
  'FPE',
  'HUP',
  'ILL',
  'INT',
  'IO',
  'IOT',
  'KILL',
  'PIPE',
  'POLL',
  'PROF',
  'PWR',
  'QUIT',
  'SEGV',
  'STKFLT',
  'STOP',
  'SYS',
  'TERM',
  'TRAP',
  'TSTP',
  'TTIN',
  'TTOU',
  'URG',
  'USR1',
  'USR2',
  'VTALRM',
  'WINCH',
  'XCPU',
  'XFSZ',
];

/** moby/sys/signal.ParseSignal's validation: a non-zero number, or a known name with or without SIG. */
export function validateSignal(raw: string): void {
  if (/^-?[0-9]+$/.test(raw)) {
    if (Number(raw) === 0) throw new Error(`Invalid signal: ${raw}`);
    return;
  }
  const name = raw.toUpperCase().replace(/^SIG/, '');
  if (SIGNALS.includes(name) || /^RTMIN(\+\d+)?$|^RTMAX(-\d+)?$/.test(name)) return;
  throw new Error(`Invalid signal: ${raw}`);
}
