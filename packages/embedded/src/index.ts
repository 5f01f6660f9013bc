export { KafkaMock, KafkaApi, KafkaErr, KAFKA_MOCK_BINARY, type KafkaMockOptions } from './kafka-mock.ts';
export { RedisServer, freePort, type RedisServerOptions } from './redis-server.ts';
export { track as killWithParent } from './child-registry.ts';
