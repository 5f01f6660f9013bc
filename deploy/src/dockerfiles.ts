/**
 * Lints the services' Dockerfiles offline (no Docker engine here): syntax through dockerfile-utils
 * (the VS Code Docker linter), then this product's rules: multi-stage, pinned base images, a non-root
 * numeric USER in the final stage, the metrics port EXPOSEd and set in ENV, an exec-form ENTRYPOINT
 * that runs the service's main.ts, COPY sources that exist, and the native KVM helper built exactly
 * in the images of services that load it.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { validate } from 'dockerfile-utils';
import type { CheckResult } from './check-result.ts';

export const SERVICES = ['harvester', 'replicator', 'restorer'] as const;
export type Service = (typeof SERVICES)[number];

/** The port each image serves /metrics on; the manifests and docs/metrics.md use the same. */
export const METRICS_PORTS: Record<Service, number> = { harvester: 9464, replicator: 9465, restorer: 9466 };

const ROOT = new URL('../../', import.meta.url).pathname;

interface Instruction {
  keyword: string;
  args: string;
  line: number;
}

/** Instructions with continuation lines joined and comments dropped. */
export function instructions(text: string): Instruction[] {
  const out: Instruction[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    let line = lines[i]!.trim();
    if (line === '' || line.startsWith('#')) continue;
    const start = i + 1;
    while (line.endsWith('\\') && i + 1 < lines.length) line = line.slice(0, -1) + ' ' + lines[++i]!.trim();
    const m = /^(\w+)\s*(.*)$/.exec(line);
    if (m) out.push({ keyword: m[1]!.toUpperCase(), args: m[2]!.trim(), line: start });
  }
  return out;
}

/** The instructions of the last stage (after its FROM): what the image runs with. */
export function finalStage(all: readonly Instruction[]): Instruction[] {
  return all.slice(all.map((i) => i.keyword).lastIndexOf('FROM') + 1);
}

/** What an image declares in its final stage: EXPOSEd ports and ENV (both `KEY=value` and `KEY value` forms). */
export function imageDeclarations(text: string): { expose: number[]; env: Record<string, string> } {
  const final = finalStage(instructions(text));
  const expose = final.filter((i) => i.keyword === 'EXPOSE').flatMap((i) => i.args.split(/\s+/)).map((p) => Number.parseInt(p, 10)).filter(Number.isFinite);
  const env: Record<string, string> = {};
  for (const i of final.filter((x) => x.keyword === 'ENV')) {
    const pairs = [...i.args.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S*)/g)];
    if (pairs.length === 0) {
      const m = /^(\S+)\s+(.*)$/.exec(i.args); // the legacy `ENV KEY value` form
      if (m) env[m[1]!] = m[2]!;
    }
    for (const [, k, v] of pairs) env[k!] = v!.startsWith('"') ? (JSON.parse(v!) as string) : v!;
  }
  return { expose, env };
}

/** Problems in one service's Dockerfile (`text` defaults to the committed file). */
export function lintDockerfile(service: Service, text?: string, root = ROOT): string[] {
  const file = `services/${service}/Dockerfile`;
  const path = join(root, file);
  if (text === undefined) {
    if (!existsSync(path)) return [`${file}: missing`];
    text = readFileSync(path, 'utf8');
  }
  const problems: string[] = [];
  const at = (line: number, what: string): void => void problems.push(`${file}:${line}: ${what}`);
  for (const d of validate(text)) at(d.range.start.line + 1, `${typeof d.message === 'string' ? d.message : d.message.value} (dockerfile-utils)`);

  const all = instructions(text);
  const froms = all.filter((x) => x.keyword === 'FROM');
  if (froms.length < 2) at(froms[0]?.line ?? 1, 'not multi-stage: build in one stage, copy the result into a clean runtime stage');
  for (const f of froms) {
    const image = f.args.split(/\s+/)[0]!;
    if (!/:[\w.-]+$/.test(image) || image.endsWith(':latest')) at(f.line, `base image ${image} is not pinned to a version tag`);
  }
  const final = finalStage(all);
  // Problems of the final stage as a whole are reported at its FROM.
  const stageLine = froms.at(-1)?.line ?? 1;
  const declared = imageDeclarations(text);
  const user = final.filter((x) => x.keyword === 'USER').at(-1);
  const uid = user ? Number(user.args.split(':')[0]) : NaN;
  if (!user) at(all.at(-1)?.line ?? 1, 'the final stage sets no USER: the service would run as root');
  else if (!Number.isInteger(uid) || uid === 0) at(user.line, `USER ${user.args}: use a numeric non-zero uid (runAsNonRoot can only verify a numeric one)`);

  const port = METRICS_PORTS[service];
  if (!declared.expose.includes(port)) at(stageLine, `the final stage does not EXPOSE the metrics port ${port}`);
  const envVar = `${service.toUpperCase()}_METRICS_PORT`;
  const envPort = declared.env[envVar];
  if (envPort === undefined) at(stageLine, `the final stage does not set ${envVar}=${port}`);
  else if (Number(envPort) !== port) at(stageLine, `${envVar}=${envPort} but the metrics port is ${port}`);

  const entry = final.filter((x) => x.keyword === 'ENTRYPOINT').at(-1);
  let argv: unknown = null;
  try {
    argv = entry ? JSON.parse(entry.args) : null;
  } catch {
    argv = null;
  }
  const main = `services/${service}/src/main.ts`;
  if (!entry) at(stageLine, 'no ENTRYPOINT');
  else if (!Array.isArray(argv)) at(entry.line, 'ENTRYPOINT is not in exec form: a shell in between would not pass SIGTERM on');
  else if (!argv.includes(main)) at(entry.line, `ENTRYPOINT does not run ${main}`);
  else if (!existsSync(join(root, main))) at(entry.line, `${main} does not exist`);

  for (const c of all.filter((x) => x.keyword === 'COPY' && !x.args.includes('--from='))) {
    const parts = c.args.split(/\s+/).filter((p) => !p.startsWith('--'));
    for (const src of parts.slice(0, -1)) if (!existsSync(join(root, src))) at(c.line, `COPY source ${src} does not exist in the repository`);
  }

  const deps = Object.keys((JSON.parse(readFileSync(join(root, `services/${service}/package.json`), 'utf8')) as { dependencies?: Record<string, string> }).dependencies ?? {});
  const needsNative = deps.includes('@ckpt/kvm-native');
  const buildsNative = all.some((x) => x.keyword === 'RUN' && /@ckpt\/kvm-native build/.test(x.args));
  if (needsNative && !buildsNative) at(1, 'the service loads @ckpt/kvm-native but the image never builds it (npm run -w @ckpt/kvm-native build)');
  if (!needsNative && buildsNative) at(1, 'builds the native KVM helper, which this service never loads');
  return problems;
}

export function validateDockerfiles(root = ROOT): CheckResult {
  return { count: SERVICES.length, invalid: SERVICES.flatMap((s) => lintDockerfile(s, undefined, root)), unknownMetricRefs: [] };
}
