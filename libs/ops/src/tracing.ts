import type * as OtelSdk from '@opentelemetry/sdk-node';

/**
 * OpenTelemetry for a process: the Node SDK (`@opentelemetry/sdk-node`) configured by the
 * standard `OTEL_*` environment (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL`,
 * `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
 * `OTEL_TRACES_SAMPLER`, `OTEL_PROPAGATORS`, ...), traces only: metrics are Prometheus
 * (`--metrics-listen`) and logs pino lines.
 *
 * Contract: without `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
 * nothing is installed: spans stay the API's no-ops, no context is propagated, nothing is sent.
 * Call it first in a service entry point (libraries only use `@opentelemetry/api`), and
 * `shutdown()` before the process exits so that the last spans are exported.
 */
export interface Tracing {
  /** Whether an exporter is installed. */
  readonly enabled: boolean;
  /** Exports what is pending and stops; resolves even if the collector is away. */
  shutdown(): Promise<void>;
}

/**
 * `loadSdk` loads `@opentelemetry/sdk-node` (default: a dynamic import); the `kiln` command's
 * bundle, which runs in a `vm.Script` that cannot `import()`, passes a `require` of it.
 */
export async function startTracing(
  serviceName: string,
  env: Readonly<Record<string, string | undefined>>,
  loadSdk: () => Promise<typeof OtelSdk> = () => import('@opentelemetry/sdk-node'),
): Promise<Tracing> {
  if (!env.OTEL_EXPORTER_OTLP_ENDPOINT && !env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
    return { enabled: false, shutdown: () => Promise.resolve() };
  // Loaded only when used: the SDK and its exporters are large.
  const { NodeSDK } = await loadSdk();
  const sdk = new NodeSDK({
    // OTEL_SERVICE_NAME wins (the SDK's env detector); else the service's own name.
    ...(env.OTEL_SERVICE_NAME ? {} : { serviceName }),
    instrumentations: [],
    metricReaders: [],
    logRecordProcessors: [],
  });
  sdk.start();
  return {
    enabled: true,
    shutdown: () => sdk.shutdown().catch(() => undefined),
  };
}
