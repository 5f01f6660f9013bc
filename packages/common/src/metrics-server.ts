import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { CkptError, errorMessage } from './errors.ts';

export interface MetricsServer {
  readonly port: number;
  close(): Promise<void>;
}

/**
 * Starts `metric` (a labelled counter or gauge) with a series at 0 for each of `values` of `label`, and
 * returns it. prom-client exports a labelled series only once it exists: a series born at 1 hides its
 * first event from increase() and rate(), and one never born cannot show an alert that it stays flat.
 */
export function withZeroSeries<L extends string, M extends { inc(labels: Partial<Record<L, string>>, value: number): void }>(metric: M, label: L, values: readonly string[]): M {
  for (const v of values) metric.inc({ [label]: v } as Partial<Record<L, string>>, 0);
  return metric;
}

/** Readiness check: resolves with null when ready, or a reason. */
export type ReadyCheck = () => Promise<string | null> | string | null;

/**
 * Serves `/metrics` (Prometheus text), `/healthz` (process up) and `/readyz` (dependencies
 * reachable) on `port` (0 picks a free one).
 */
export async function startMetricsServer(registry: Registry, port: number, ready: ReadyCheck = () => null, host = '0.0.0.0'): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const reply = (code: number, type: string, body: string): void => {
      res.writeHead(code, { 'content-type': type });
      res.end(body);
    };
    if (path === '/metrics') {
      registry.metrics().then((body) => reply(200, registry.contentType, body), (err: unknown) => reply(500, 'text/plain', String(err)));
    } else if (path === '/healthz') {
      reply(200, 'text/plain', 'ok\n');
    } else if (path === '/readyz') {
      Promise.resolve().then(ready).then(
        (reason) => (reason === null ? reply(200, 'text/plain', 'ready\n') : reply(503, 'text/plain', `not ready: ${reason}\n`)),
        (err: unknown) => reply(503, 'text/plain', `not ready: ${String(err)}\n`),
      );
    } else {
      reply(404, 'text/plain', 'not found: try /metrics, /healthz or /readyz\n');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/**
 * startMetricsServer() for a command's `--metrics-port`: a port it cannot listen on (taken, or not
 * allowed) is a CkptError with `code` that names the port and says what to do.
 */
export async function startCommandMetricsServer(code: string, registry: Registry, port: number, ready?: ReadyCheck, setting = '--metrics-port'): Promise<MetricsServer> {
  try {
    return await startMetricsServer(registry, port, ready);
  } catch (err) {
    throw new CkptError(code, `cannot serve /metrics on port ${port}: ${errorMessage(err)}; choose another ${setting} (0 = any free port, -1 = off)`, { cause: err });
  }
}
