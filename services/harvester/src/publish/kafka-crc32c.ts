/**
 * Gives kafkajs the native helper's CRC-32C for the record batches it produces.
 *
 * kafkajs checksums every record batch in JavaScript, a byte at a time (about 400 MB/s here). Publishing
 * incompressible pages, that was the largest single cost in the harvester's process: 19% of its busy
 * time at 55 MB/s (bench:pipeline). The crc32 instruction does the same in a few hundredths of that.
 *
 * kafkajs takes its CRC function once, when its record-batch module loads (at the process's first
 * produce or fetch, not at import), so this module must be evaluated before then: the harvester's main.ts
 * and the pipeline import it first, and importing `@ckpt/harvester` does it too. It puts its function in
 * Node's module cache under the path of kafkajs's CRC module, so kafkajs's own `require` finds it. When
 * kafkajs had loaded that module already, or the native helper is not built, kafkajs keeps its own
 * code: slower, equally correct, and said by kafkaCrc32c().
 */
import { Module } from 'node:module';
import { errorMessage } from '@ckpt/common';
import { crc32c } from '@ckpt/kvm-native';
import { kafkajsRequire as require, unloadedKafkajsModule } from './kafkajs-module.ts';

/** The module of kafkajs that exports `buffer => crc` for record batches (kafkajs 2.x). */
const KAFKAJS_CRC_MODULE = 'kafkajs/src/protocol/recordBatch/crc32C/index.js';
/** CRC-32C of "123456789". */
const CHECK_VALUE = 0xe3069283;

export interface KafkaCrcStatus {
  /** "native": kafkajs checksums record batches with the native helper; "kafkajs": with its own code. */
  impl: 'native' | 'kafkajs';
  /** Why kafkajs keeps its own code ('' when native). */
  reason: string;
  /** Record batches checksummed with the native CRC-32C so far in this process. */
  batches: number;
}

let batches = 0;
const nativeCrc = (buffer: Buffer): number => {
  batches++;
  return crc32c(buffer);
};

/** Puts nativeCrc where kafkajs will `require` its CRC module; returns the module's path, or why not. */
function install(): { path: string } | { reason: string } {
  const where = unloadedKafkajsModule(KAFKAJS_CRC_MODULE, 'kafkajs had loaded its record-batch code before the harvester could give it the native CRC-32C');
  if ('reason' in where) return where;
  const { path } = where;
  try {
    // Loads the helper too (throws when it is not built).
    if (crc32c(Buffer.from('123456789')) !== CHECK_VALUE) return { reason: 'the native CRC-32C failed its check value' };
  } catch (err) {
    return { reason: errorMessage(err) };
  }
  const m = new Module(path);
  m.filename = path;
  m.loaded = true;
  m.exports = nativeCrc;
  require.cache[path] = m;
  return { path };
}

const installed = install();

/** Which CRC-32C kafkajs uses for the record batches this process produces, and why. */
export function kafkaCrc32c(): KafkaCrcStatus {
  if ('reason' in installed) return { impl: 'kafkajs', reason: installed.reason, batches };
  // Loaded since: check that kafkajs really took ours (it takes whatever the cache holds at its load).
  if (require.cache[installed.path]?.exports !== nativeCrc) return { impl: 'kafkajs', reason: 'another CRC-32C module replaced the native one', batches };
  return { impl: 'native', reason: '', batches };
}
