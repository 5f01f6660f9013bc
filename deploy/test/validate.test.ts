/** The bar command of deploy/: `npm run -s validate:deploy -- --json`, as CI and users run it. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

test('npm run validate:deploy -- --json: everything valid, no unknown metric, every part counted', () => {
  const r = spawnSync('npm', ['run', '-s', 'validate:deploy', '--', '--json'], { cwd: ROOT, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const last = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Record<string, number>;
  assert.equal(last.invalid, 0, r.stderr);
  assert.equal(last.unknownMetricRefs, 0, r.stderr);
  assert.equal(last.dashboards, 3);
  assert.equal(last.dockerfiles, 3);
  assert.ok(last.manifests! >= 30, `manifests rendered: ${last.manifests}`);
  assert.ok(last.alertRules! >= 7, `alert rules: ${last.alertRules}`);
  assert.ok(last.metrics! >= 40, `metrics documented: ${last.metrics}`);
});

test('validate:deploy --help and a bad option', () => {
  const help = spawnSync('npm', ['run', '-s', 'validate:deploy', '--', '--help'], { cwd: ROOT, encoding: 'utf8' });
  assert.equal(help.status, 0);
  assert.match(help.stdout, /Validates deploy\/ offline/);
  const bad = spawnSync('npm', ['run', '-s', 'validate:deploy', '--', '--jsn'], { cwd: ROOT, encoding: 'utf8' });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /unknown option --jsn/);
});
