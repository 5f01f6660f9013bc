/**
 * Writes deploy/grafana/dashboards/*.json and deploy/grafana/kustomization.yaml from the dashboard
 * code (`npm run build:dashboards`). Commit what it writes: `npm run validate:deploy` fails while the
 * committed files differ from what the code generates.
 */
import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { DASHBOARDS, DASHBOARDS_FOLDER, renderDashboard, renderKustomization } from './catalog.ts';

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
