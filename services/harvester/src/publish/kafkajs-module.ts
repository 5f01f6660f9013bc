/**
 * Where a module of kafkajs's source lives, for the harvester's replacements of kafkajs internals
 * (kafka-crc32c.ts, kafka-encoder.ts). A replacement only takes if kafkajs has not loaded the module yet.
 */
import { createRequire } from 'node:module';

export const kafkajsRequire = createRequire(import.meta.url);

/** The module's path if kafkajs has it there and has not loaded it yet; else why not (`loadedReason` when loaded). */
export function unloadedKafkajsModule(spec: string, loadedReason: string): { path: string } | { reason: string } {
  let path: string;
  try {
    path = kafkajsRequire.resolve(spec);
  } catch {
    return { reason: `${spec} is not where kafkajs 2.x has it` };
  }
  if (kafkajsRequire.cache[path]) return { reason: loadedReason };
  return { path };
}
