import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createInterface, type Interface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { CkptError } from '@ckpt/common';
import { track } from './child-registry.ts';

export const KAFKA_MOCK_BINARY = fileURLToPath(new URL('../build/kafka-mock', import.meta.url));

/** Kafka protocol API keys the tests inject errors into. */
export const KafkaApi = { Produce: 0, Fetch: 1, ListOffsets: 2, Metadata: 3, OffsetCommit: 8, OffsetFetch: 9, FindCoordinator: 10, JoinGroup: 11, Heartbeat: 12, SyncGroup: 14 } as const;
/** Kafka error codes the tests inject. `Transport` makes the broker drop the connection. */
export const KafkaErr = { Transport: -195, UnknownTopicOrPartition: 3, NotLeaderForPartition: 6, RequestTimedOut: 7, NotEnoughReplicas: 19, NotCoordinator: 16, RebalanceInProgress: 27, TopicAuthorizationFailed: 29, InvalidRequest: 42 } as const;

export interface KafkaMockOptions {
  brokers?: number;
  topics?: { name: string; partitions: number }[];
}

/**
 * librdkafka's mock Kafka cluster in a child process (packages/embedded/kafka-mock): real TCP
 * listeners on 127.0.0.1 that kafkajs talks to, with fault injection. Not a real broker: partitions
 * keep only 5 MiB, no idempotent/transactional producers, no CreateTopics (use createTopic()).
 */
export class KafkaMock {
  private queue: Promise<unknown> = Promise.resolve();
  private stopped = false;

  private constructor(
    private readonly child: ChildProcessWithoutNullStreams,
    private readonly lines: Interface,
    private readonly iter: AsyncIterator<string>,
    readonly brokers: string[],
    readonly brokerCount: number,
  ) {}

  static async start(opts: KafkaMockOptions = {}): Promise<KafkaMock> {
    if (!existsSync(KAFKA_MOCK_BINARY)) {
      throw new CkptError('CKPT_ERR_EMBEDDED_NOT_BUILT', `the Kafka test broker is not built (${KAFKA_MOCK_BINARY}): run npm run setup`);
    }
    const brokerCount = opts.brokers ?? 1;
    const args = ['--brokers', String(brokerCount)];
    for (const t of opts.topics ?? []) args.push('--topic', `${t.name}:${t.partitions}`);
    const child = spawn(KAFKA_MOCK_BINARY, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    track(child);
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-4000); });
    const lines = createInterface({ input: child.stdout });
    const iter = lines[Symbol.asyncIterator]();
    const first = await Promise.race([
      iter.next(),
      new Promise<never>((_, reject) => child.once('exit', (code) => reject(new CkptError('CKPT_ERR_EMBEDDED_START', `the Kafka test broker exited (${code}) before it was ready: ${stderr.trim()}`)))),
    ]);
    const m = /^READY (\S+)$/.exec(first.done ? '' : first.value);
    if (!m) {
      child.kill('SIGKILL');
      throw new CkptError('CKPT_ERR_EMBEDDED_START', `the Kafka test broker did not start: ${stderr.trim() || String(first.value)}`);
    }
    return new KafkaMock(child, lines, iter, m[1]!.split(','), brokerCount);
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Sends one command and waits for its answer; commands run one at a time. */
  private command(line: string): Promise<void> {
    const run = async (): Promise<void> => {
      if (this.stopped) throw new CkptError('CKPT_ERR_EMBEDDED_STOPPED', 'the Kafka test broker is stopped');
      this.child.stdin.write(line + '\n');
      const r = await this.iter.next();
      if (r.done) throw new CkptError('CKPT_ERR_EMBEDDED_STOPPED', `the Kafka test broker exited during "${line}"`);
      if (r.value !== 'OK') throw new CkptError('CKPT_ERR_EMBEDDED_COMMAND', `kafka-mock: ${line}: ${r.value}`);
    };
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => undefined);
    return p;
  }

  async createTopic(name: string, partitions: number, replication = 1): Promise<void> {
    if (!/^[A-Za-z0-9._-]{1,200}$/.test(name)) throw new RangeError(`bad topic name ${JSON.stringify(name)}`);
    await this.command(`topic ${name} ${partitions} ${replication}`);
  }

  /** Disconnects a broker (or all, -1) and refuses new connections until brokerUp(). */
  brokerDown(id = -1): Promise<void> {
    return this.command(`down ${id}`);
  }

  brokerUp(id = -1): Promise<void> {
    return this.command(`up ${id}`);
  }

  setRtt(id: number, ms: number): Promise<void> {
    return this.command(`rtt ${id} ${ms}`);
  }

  /**
   * Metadata requests for `topic` answer `error` from now on (0 = answer normally again). The mock creates
   * any topic a client asks about, so UNKNOWN_TOPIC_OR_PARTITION (3) here is how a test sees a missing one.
   */
  setTopicError(topic: string, error: number): Promise<void> {
    return this.command(`topic-error ${topic} ${error}`);
  }

  /** The next `errors.length` requests of `apiKey` fail with these codes, in order. */
  pushRequestErrors(apiKey: number, errors: number[]): Promise<void> {
    return this.command(`errors ${apiKey} ${errors.join(' ')}`);
  }

  clearRequestErrors(apiKey: number): Promise<void> {
    return this.command(`clear ${apiKey}`);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    const exited = new Promise<void>((r) => {
      if (this.child.exitCode !== null || this.child.signalCode !== null) r();
      else this.child.once('exit', () => r());
    });
    try {
      await this.command('quit');
    } catch {
      this.child.kill('SIGKILL');
    }
    this.stopped = true;
    this.child.stdin.end();
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
    this.lines.close();
  }
}
