import type { TestContext } from 'node:test';
import type { KafkaMock } from '@ckpt/embedded';
import { startServers, type Servers } from '../src/index.ts';

/**
 * Servers of one partition for a test that drives the embedded broker itself (takes it down, injects
 * errors, relies on its join delay). With KAFKA_BROKERS pointing elsewhere there is none: the servers
 * are stopped again, the test is skipped saying why (`needs the embedded broker<why> (KAFKA_BROKERS
 * points elsewhere)`), and the result is null.
 */
export async function serversWithEmbeddedBroker(t: TestContext, why: string): Promise<(Servers & { kafka: KafkaMock }) | null> {
  const servers = await startServers({ partitions: 1 });
  if (servers.kafka) return servers as Servers & { kafka: KafkaMock };
  t.skip(`needs the embedded broker${why} (KAFKA_BROKERS points elsewhere)`);
  await servers.stop();
  return null;
}
