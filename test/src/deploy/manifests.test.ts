/**
 * deploy/compose and deploy/k8s, validated offline: the compose file by Debian's docker-compose
 * (`config`, its own schema, with the farm's secrets given and without), the Kubernetes
 * kustomizations by building them here (resources, namespace, JSON patches: the subset they use)
 * and validating every object against the Kubernetes and KEDA schemas (kubernetes-models,
 * @kubernetes-models/keda), then checking what the farm needs of them.
 */
/* eslint-disable @typescript-eslint/no-unsafe-argument, @typescript-eslint/no-unsafe-member-access,
   @typescript-eslint/no-unsafe-assignment, @typescript-eslint/no-unsafe-call,
   @typescript-eslint/no-unsafe-return -- untyped YAML, see Obj */
import { spawnSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ScaledObject } from '@kubernetes-models/keda/keda.sh/v1alpha1';
import { StatefulSet, Deployment } from 'kubernetes-models/apps/v1';
import { Job } from 'kubernetes-models/batch/v1';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { ConfigMap, Namespace, Service } from 'kubernetes-models/v1';
import { describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { REPO_ROOT } from '../harness/index.js';

const DEPLOY = join(REPO_ROOT, 'deploy');

// ---- compose ----

const SECRETS = {
  KILN_S3_ACCESS_KEY: 'access',
  KILN_S3_SECRET_KEY: 'secret',
  KILN_NATS_SCHEDULER_PASSWORD: 'p1',
  KILN_NATS_CACHE_STORE_PASSWORD: 'p4',
  KILN_NATS_WORKER_AMD64_PASSWORD: 'p2',
  KILN_NATS_WORKER_ARM64_PASSWORD: 'p3',
};

function composeConfig(env: Record<string, string>) {
  return spawnSync('docker-compose', ['-f', join(DEPLOY, 'compose', 'compose.yaml'), 'config'], {
    encoding: 'utf8',
    env: { PATH: process.env.PATH ?? '', ...env },
  });
}

// Manifests are untyped YAML walked by path; their shape is what the schemas check.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Obj = { [k: string]: any };

describe('deploy/compose', () => {
  it('is valid for docker-compose, with health checks, volumes and the security settings', () => {
    const r = composeConfig(SECRETS);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const c = parse(r.stdout) as Obj;
    expect(Object.keys(c.services).sort()).toEqual([
      'cache-store',
      'minio',
      'nats',
      'scheduler',
      'worker-amd64',
      'worker-arm64',
    ]);
    for (const [name, s] of Object.entries(c.services as Record<string, Obj>)) {
      expect(s.healthcheck?.test, name).toBeDefined();
      if (!name.startsWith('worker')) {
        expect(s.cap_drop, name).toEqual(['ALL']);
        expect(s.security_opt, name).toContain('no-new-privileges:true');
        expect(s.user, name).toBe('65534:65534');
      }
    }
    expect(c.services.nats.command).toContain('8222');
    expect(c.services.scheduler.environment.KILN_TLS_CERT).toBeTruthy();
    expect(c.services.scheduler.environment.KILN_TOKENS_FILE).toBeTruthy();
    expect(c.services['worker-arm64'].environment.KILN_WORKER_PLATFORMS).toBe(
      'linux/arm64=emulated',
    );
    expect(c.services['worker-amd64'].environment.KILN_NATS_USER).toBe('kiln-worker-amd64-1');
    // The store's collector: its own read-only bus user, the S3 store, a readiness probe.
    const cs = c.services['cache-store'].environment;
    expect(cs.KILN_NATS_USER).toBe('kiln-cache-store');
    expect(cs.KILN_S3_BUCKET).toBe('kiln');
    expect(cs.KILN_HEALTH_LISTEN).toBeTruthy();
    expect(Object.keys(c.volumes).sort()).toEqual([
      'nats-data',
      'store-data',
      'worker-amd64-state',
      'worker-arm64-state',
    ]);
  });

  it('refuses to start without the secrets', () => {
    const r = composeConfig({});
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain('set in farm.env');
  });
});

// ---- kustomize (the subset used here) ----

interface Patch {
  target: { kind: string; name: string };
  patch: string;
}

function loadFile(file: string): Obj[] {
  return parseAllDocuments(readFileSync(file, 'utf8'))
    .map((d) => d.toJS() as Obj | null)
    .filter((d): d is Obj => d !== null);
}

const CLUSTER_SCOPED = new Set(['Namespace']);

/** `kustomize build dir`: resources (files and directories), namespace, JSON 6902 patches. */
function build(dir: string): Obj[] {
  const k = parse(readFileSync(join(dir, 'kustomization.yaml'), 'utf8')) as Obj;
  expect(k.kind).toBe('Kustomization');
  const out: Obj[] = [];
  for (const r of k.resources as string[]) {
    const p = resolve(dir, r);
    out.push(...(statSync(p).isDirectory() ? build(p) : loadFile(p)));
  }
  if (k.namespace)
    for (const o of out) if (!CLUSTER_SCOPED.has(o.kind)) o.metadata.namespace = k.namespace;
  for (const p of (k.patches ?? []) as Patch[]) {
    const target = out.find((o) => o.kind === p.target.kind && o.metadata.name === p.target.name);
    expect(target, `patch target ${p.target.kind}/${p.target.name}`).toBeDefined();
    for (const op of parse(p.patch) as { op: string; path: string; value: unknown }[]) {
      expect(op.op).toBe('replace');
      const keys = op.path
        .split('/')
        .slice(1)
        .map((x) => x.replace(/~1/g, '/').replace(/~0/g, '~'));
      let at: Obj = target!;
      for (const key of keys.slice(0, -1)) at = at[key] as Obj;
      const last = keys.at(-1)!;
      expect(at[last], `${op.path} exists`).toBeDefined();
      at[last] = op.value;
    }
  }
  return out;
}

const MODELS: Record<string, new (o: never) => { validate(): void }> = {
  'v1/Namespace': Namespace,
  'v1/ConfigMap': ConfigMap,
  'v1/Service': Service,
  'apps/v1/Deployment': Deployment,
  'apps/v1/StatefulSet': StatefulSet,
  'batch/v1/Job': Job,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy,
  'keda.sh/v1alpha1/ScaledObject': ScaledObject,
};

const byKind = (objs: Obj[], kind: string): Obj[] => objs.filter((o) => o.kind === kind);
const matches = (sel: Record<string, string>, labels: Record<string, string>): boolean =>
  Object.entries(sel).every(([k, v]) => labels[k] === v);

function checkFarm(objs: Obj[], arm64: 'native' | 'emulated'): void {
  for (const o of objs) {
    const Model = MODELS[`${o.apiVersion}/${o.kind}`];
    expect(Model, `a schema for ${o.apiVersion} ${o.kind}`).toBeDefined();
    expect(() => new Model!(o as never).validate(), `${o.kind}/${o.metadata.name}`).not.toThrow();
  }
  const names = objs.map((o) => `${o.kind}/${o.metadata.name}`);
  expect(new Set(names).size).toBe(names.length);
  const sets = byKind(objs, 'StatefulSet');
  const pods = [...sets, ...byKind(objs, 'Deployment')];
  // NATS: JetStream on a persistent volume, monitoring port.
  const nats = sets.find((s) => s.metadata.name === 'nats')!;
  expect(nats.spec.volumeClaimTemplates[0].metadata.name).toBe('data');
  const conf = byKind(objs, 'ConfigMap')[0]!.data['nats-server.conf'] as string;
  expect(conf).toMatch(/jetstream \{\s*store_dir: \/data\//);
  expect(conf).toContain('http_port: 8222');
  // The scheduler: gRPC health readiness probe, TLS secret.
  const sched = byKind(objs, 'Deployment').find((d) => d.metadata.name === 'kiln-scheduler')!;
  const sc = sched.spec.template.spec.containers[0];
  expect(sc.readinessProbe.grpc.port).toBe(8470);
  expect(sched.spec.template.spec.volumes.map((v: Obj) => v.secret?.secretName)).toContain(
    'kiln-scheduler-tls',
  );
  // The store's collector: its read-only bus user, readiness on /readyz, and NATS reachable.
  const store = byKind(objs, 'Deployment').find((d) => d.metadata.name === 'kiln-cache-store')!;
  const stc = store.spec.template.spec.containers[0];
  const stEnv = Object.fromEntries((stc.env as Obj[]).map((e) => [e.name, e.value]));
  expect(stEnv.KILN_NATS_USER).toBe('kiln-cache-store');
  expect(stc.readinessProbe.httpGet.path).toBe('/readyz');
  expect(stc.envFrom[0].secretRef.name).toBe('kiln-s3');
  // One worker pool per architecture, placed by node arch, drained on SIGTERM.
  const workers = sets.filter((s) => s.metadata.name.startsWith('kiln-worker-'));
  expect(workers.map((w) => w.metadata.name).sort()).toEqual([
    'kiln-worker-amd64',
    'kiln-worker-arm64',
  ]);
  for (const w of workers) {
    const spec = w.spec.template.spec;
    const env = Object.fromEntries((spec.containers[0].env as Obj[]).map((e) => [e.name, e.value]));
    const arch = w.metadata.name.replace('kiln-worker-', '');
    const emulated = arch === 'arm64' && arm64 === 'emulated';
    expect(spec.nodeSelector['kubernetes.io/arch']).toBe(emulated ? 'amd64' : arch);
    expect(env.KILN_WORKER_PLATFORMS).toBe(`linux/${arch}${emulated ? '=emulated' : ''}`);
    expect(spec.terminationGracePeriodSeconds * 1000).toBeGreaterThan(
      Number(env.KILN_WORKER_DRAIN_TIMEOUT_MS),
    );
    expect(spec.containers[0].readinessProbe.httpGet.path).toBe('/readyz');
    expect(spec.containers[0].resources.requests).toBeDefined();
  }
  // Every PodDisruptionBudget and NetworkPolicy selects pods that exist.
  for (const pdb of byKind(objs, 'PodDisruptionBudget'))
    expect(
      pods.some((p) => matches(pdb.spec.selector.matchLabels, p.spec.template.metadata.labels)),
    ).toBe(true);
  for (const w of workers)
    expect(
      byKind(objs, 'PodDisruptionBudget').some((pdb) =>
        matches(pdb.spec.selector.matchLabels, w.spec.template.metadata.labels),
      ),
    ).toBe(true);
  const policies = byKind(objs, 'NetworkPolicy');
  const control = policies.find((p) => p.metadata.name === 'kiln-control-plane')!;
  const controlPods = pods.filter((p) =>
    matches(control.spec.podSelector.matchLabels, p.spec.template.metadata.labels),
  );
  expect(controlPods.map((p) => p.metadata.name).sort()).toEqual(['kiln-scheduler', 'nats']);
  // Workers' pods reach NATS only (port 4222), never the control API's port; so does the
  // store's collector.
  const natsRule = (control.spec.ingress as Obj[]).find((r) =>
    (r.ports as Obj[]).some((p) => p.port === 4222),
  )!;
  expect(
    (natsRule.from as Obj[]).some((f) =>
      matches(f.podSelector?.matchLabels ?? { none: '' }, store.spec.template.metadata.labels),
    ),
  ).toBe(true);
  for (const rule of control.spec.ingress as Obj[]) {
    const fromWorkers = (rule.from as Obj[]).some(
      (f) => f.podSelector?.matchLabels?.['kiln.dev/role'] === 'worker',
    );
    if (fromWorkers) expect(rule.ports).toEqual([{ port: 4222 }]);
  }
  // KEDA: one ScaledObject per pool, on that platform's consumer.
  const scaled = byKind(objs, 'ScaledObject');
  for (const w of workers) {
    const so = scaled.find((s) => s.spec.scaleTargetRef.name === w.metadata.name)!;
    expect(so.spec.scaleTargetRef.kind).toBe('StatefulSet');
    const t = so.spec.triggers[0];
    expect(t.type).toBe('nats-jetstream');
    expect(t.metadata.stream).toBe('KILN_TASKS');
    const arch = w.metadata.name.replace('kiln-worker-', '');
    const emu = arch === 'arm64' && arm64 === 'emulated' ? '-emu' : '';
    expect(t.metadata.consumer).toBe(`kiln-task-linux-${arch}${emu}`);
  }
  // The build Job runs `kiln build` once.
  const job = byKind(objs, 'Job')[0]!;
  expect(job.spec.template.spec.restartPolicy).toBe('Never');
  expect(job.spec.template.spec.containers[0].args[0]).toBe('build');
  for (const o of objs) if (o.kind !== 'Namespace') expect(o.metadata.namespace).toBe('kiln');
}

describe('deploy/k8s', () => {
  for (const [overlay, arm64] of [
    ['native-arm64', 'native'],
    ['emulated-arm64', 'emulated'],
  ] as const)
    it(`overlay ${overlay} builds and validates against the Kubernetes and KEDA schemas`, () => {
      checkFarm(build(join(DEPLOY, 'k8s', 'overlays', overlay)), arm64);
    });

  it('the schemas catch a broken manifest', () => {
    const objs = build(join(DEPLOY, 'k8s', 'base'));
    const sched = objs.find(
      (o) => o.metadata.name === 'kiln-scheduler' && o.kind === 'Deployment',
    )!;
    sched.spec.template.spec.containers[0].ports[0].containerPort = 'grpc';
    expect(() => new Deployment(sched as never).validate()).toThrow(/containerPort/);
  });
});
