/**
 * `npm run drill`: the failover rehearsal. Not built yet: it needs the restorer (issue "Restorer and
 * npm run drill"). Until then it says so and points at what works today.
 */
process.stderr.write([
  'drill: not yet. The failover rehearsal needs the restorer, which is not built yet.',
  'What works today:',
  '  npm run harvest -- --source auto --mem-mib 256 --vcpus 2 --workload random --epochs 20 --verify',
  '      the harvester checks itself against a real KVM guest (or the simulator)',
  '  npm run pipeline -- --source auto --vms 2 --duration-s 10',
  '      harvester -> Kafka -> replicator -> Redis, then every standby is checked against the last committed epoch',
  '',
].join('\n'));
process.exitCode = 2; // nothing was verified: never report success
