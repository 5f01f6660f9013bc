import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { lintDockerfile, validateDockerfiles } from '../src/dockerfiles.ts';

const harvester = readFileSync(new URL('../../services/harvester/Dockerfile', import.meta.url), 'utf8');

test('every service has a Dockerfile that passes the linter and the product rules', () => {
  const r = validateDockerfiles();
  assert.deepEqual(r.invalid, []);
  assert.equal(r.count, 3);
});

test('NEGATIVE: the Dockerfile check catches each rule it exists for', () => {
  const cases: [string, string, RegExp][] = [
    ['root user', harvester.replace('USER 10001:10001', 'USER root'), /numeric non-zero uid/],
    ['no user', harvester.replace('USER 10001:10001\n', ''), /sets no USER/],
    ['unpinned base', harvester.replace(/FROM node:[\w.-]+ AS build/, 'FROM node AS build'), /not pinned/],
    ['shell-form entrypoint', harvester.replace(/ENTRYPOINT \[.*\]/, 'ENTRYPOINT node --import tsx services/harvester/src/main.ts'), /exec form/],
    ['wrong port', harvester.replace('EXPOSE 9464', 'EXPOSE 8080'), /does not EXPOSE the metrics port 9464/],
    ['native helper not built', harvester.replace(/RUN npm run -s -w @ckpt\/kvm-native build\n/, ''), /never builds it/],
    ['missing COPY source', harvester.replace('COPY proto ./proto', 'COPY protos ./proto'), /COPY source protos does not exist/],
    ['syntax', harvester.replace('WORKDIR /app', 'WORKDIRR /app'), /dockerfile-utils/],
  ];
  for (const [what, text, expected] of cases) {
    assert.notEqual(text, harvester, `${what}: the mutation applies`);
    const problems = lintDockerfile('harvester', text);
    assert.ok(problems.some((p) => expected.test(p)), `${what}: expected ${expected}, got ${JSON.stringify(problems)}`);
  }
});
