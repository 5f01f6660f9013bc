/**
 * The two replacements of kafkajs internals the harvester makes (kafka-crc32c.ts, kafka-encoder.ts),
 * reported together: importing this module first installs both, and reportKafkajsSpeedups() warns about
 * either that kafkajs did not take.
 */
import { kafkaCrc32c, type KafkaCrcStatus } from './kafka-crc32c.ts';
import { kafkaEncoder, type KafkaEncoderStatus } from './kafka-encoder.ts';
import type { Logger } from '@ckpt/common';

export interface KafkajsSpeedups {
  kafkaCrc32c: KafkaCrcStatus['impl'];
  kafkaEncoder: KafkaEncoderStatus['impl'];
}

/** Which CRC-32C and encoder kafkajs uses; a warning (with `fields`) for each that is kafkajs's own, slower one. */
export function reportKafkajsSpeedups(log: Logger, fields: Record<string, unknown> = {}): KafkajsSpeedups {
  const crc = kafkaCrc32c();
  if (crc.impl !== 'native') log.warn('record batches are checksummed by kafkajs\'s JavaScript CRC-32C (slower)', { ...fields, reason: crc.reason });
  const enc = kafkaEncoder();
  if (enc.impl !== 'chunked') log.warn('kafkajs copies every record through its own encoder (slower)', { ...fields, reason: enc.reason });
  return { kafkaCrc32c: crc.impl, kafkaEncoder: enc.impl };
}
