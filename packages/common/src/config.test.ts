import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConfigError, helpText, parseConfig, unknownEnv, type Schema } from './index.ts';

const schema = {
  memMib: { type: 'int', default: 256, min: 8, help: 'memory' },
  ringEntries: { type: 'int', default: 4096, powerOfTwo: true, help: 'ring' },
  mode: { type: 'enum', values: ['a', 'b'], default: 'a', help: 'mode' },
  verify: { type: 'bool', default: false, help: 'verify' },
  name: { type: 'string', help: 'name' },
} as const satisfies Schema;

test('flags override env override defaults; result is frozen', () => {
  const c = parseConfig(schema, { argv: ['--mem-mib', '512', '--verify', '--name=x'], env: { T_MEM_MIB: '64', T_MODE: 'b' }, envPrefix: 'T_' });
  assert.equal(c.memMib, 512);
  assert.equal(c.mode, 'b');
  assert.equal(c.verify, true);
  assert.equal(c.ringEntries, 4096);
  assert.ok(Object.isFrozen(c));
  assert.equal(parseConfig(schema, { argv: ['--name', 'y', '--no-verify'] }).verify, false);
});

test('every bad value is listed at once, with what is allowed', () => {
  try {
    parseConfig(schema, { argv: ['--mem-mib', '4', '--ring-entries', '1000', '--mode', 'c', '--bogus', '--verify=maybe'] });
    assert.fail('should throw');
  } catch (err) {
    assert.ok(err instanceof ConfigError);
    assert.equal(err.code, 'CKPT_ERR_CONFIG_INVALID');
    const text = err.problems.join('\n');
    assert.match(text, /below the minimum 8/);
    assert.match(text, /power of two \(e\.g\. 1024\)/);
    assert.match(text, /not one of a, b/);
    assert.match(text, /unknown option --bogus/);
    assert.match(text, /not a boolean/);
    assert.match(text, /--name is required/);
    assert.equal(err.problems.length, 6);
  }
});

test('help lists every option with defaults and env names', () => {
  const h = helpText(schema, 'usage', 'T_');
  for (const f of ['--mem-mib', '--ring-entries', '--mode <a|b>', '--verify', 'T_MEM_MIB', '(default: 256; at least 8)', '(required)']) assert.ok(h.includes(f), f);
  // A switch on by default says how to turn it off; an empty default is not shown as "(default: )"; ranges show.
  const h2 = helpText({
    idempotent: { type: 'bool', default: true, help: 'idem' }, url: { type: 'string', default: '', help: 'url' }, n: { type: 'int', default: 2, min: 1, max: 9, help: 'n' },
  }, 'usage');
  assert.match(h2, /--idempotent, --no-idempotent +idem \(default: true\)/);
  assert.match(h2, /--url <text> +url\n/);
  assert.match(h2, /--n <n> +n \(default: 2; 1\.\.9\)/);
});

test('unknownEnv names prefixed variables that are no setting (a misspelt one left its default silently), not Kubernetes service links', () => {
  const s = { memMib: { type: 'int', default: 256, help: 'm' }, vmId: { type: 'string', default: '', help: 'v' } } as const satisfies Schema;
  const env = {
    HARVESTER_MEM_MIB: '32', HARVESTER_VM_ID: 'a', HARVESTER_MEMMIB: '32', HARVESTER_VMID: 'b', OTHER_THING: '1',
    HARVESTER_SERVICE_HOST: '10.0.0.1', HARVESTER_SERVICE_PORT: '9464', HARVESTER_SERVICE_PORT_METRICS: '9464', HARVESTER_PORT: 'tcp://10.0.0.1:9464', HARVESTER_PORT_9464_TCP_ADDR: '10.0.0.1',
  };
  assert.deepEqual(unknownEnv(s, env, 'HARVESTER_'), ['HARVESTER_MEMMIB', 'HARVESTER_VMID']);
  assert.deepEqual(unknownEnv(s, { HARVESTER_MEM_MIB: '1' }, 'HARVESTER_'), []);
});
