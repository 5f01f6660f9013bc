/**
 * Writes deploy/grafana/dashboards/*.json and deploy/grafana/kustomization.yaml from the dashboard
 * code (`npm run build:dashboards`). Commit what it writes: `npm run validate:deploy` fails while the
 * committed files differ from what the code generates.
 */
import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { commandConfig } from '@ckpt/common';
import { DASHBOARDS, DASHBOARDS_FOLDER, renderDashboard, renderKustomization } from './catalog.ts';

const USAGE = `usage: npm run build:dashboards

Writes deploy/grafana/dashboards/*.json and deploy/grafana/kustomization.yaml from the dashboard code
(deploy/grafana/src). Commit what it writes: npm run validate:deploy fails while the committed files
differ from what the code generates. Takes no options.`;
// --help, or a stray option, writes nothing.
const cfg = commandConfig('build:dashboards', {}, USAGE, process.argv.slice(2));
if (typeof cfg === 'number') process.exit(cfg);

const grafanaDir = fileURLToPath(new URL('..', import.meta.url));
const dashboardsDir = fileURLToPath(new URL(`../${DASHBOARDS_FOLDER}/`, import.meta.url));

mkdirSync(dashboardsDir, { recursive: true });
const wanted = new Set(DASHBOARDS.map((d) => d.file));
// A dashboard removed from the code must not linger as a committed file.
for (const name of readdirSync(dashboardsDir)) {
  if (name.endsWith('.json') && !wanted.has(name)) {
    rmSync(dashboardsDir + name);
    console.log(`removed ${DASHBOARDS_FOLDER}/${name}`);
  }
}
for (const d of DASHBOARDS) {
  writeFileSync(dashboardsDir + d.file, renderDashboard(d.build()));
  console.log(`wrote ${DASHBOARDS_FOLDER}/${d.file}`);
}
writeFileSync(grafanaDir + 'kustomization.yaml', renderKustomization());
console.log('wrote kustomization.yaml');
