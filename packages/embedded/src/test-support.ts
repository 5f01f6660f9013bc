/**
 * For test files: one redis-server (AOF, a free port) and a client, started before the file's tests and
 * stopped after them (node:test hooks). Read `server` and `redis` inside tests; `onReady` runs once they
 * exist (a second top-level before() hook may run before this one has finished).
 */
import { after, before } from 'node:test';
import { Redis } from 'ioredis';
import { RedisServer } from './redis-server.ts';

export function redisForTests(onReady?: (db: { server: RedisServer; redis: Redis }) => void): { readonly server: RedisServer; readonly redis: Redis } {
  let server: RedisServer | null = null;
  let redis: Redis | null = null;
  before(async () => {
    server = await RedisServer.start();
    redis = new Redis(server.port, '127.0.0.1');
    onReady?.({ server, redis });
  });
  after(async () => {
    redis?.disconnect();
    await server?.stop();
  });
  const started = <T>(v: T | null): T => {
    if (v === null) throw new Error('redisForTests(): the redis-server starts in a before() hook; use it inside tests');
    return v;
  };
  return {
    get server() { return started(server); },
    get redis() { return started(redis); },
  };
}
