export { runPipeline, type PipelineOptions, type PipelineResult } from './run-pipeline.ts';
export { connectRedis, ReplicatorPool, startServers, spawnHarvester, spawnReplicator, stopChild, DEFAULT_TOPICS, type Servers, type Topics } from './servers.ts';
export { verifyStandby, type StandbyCheck } from './verify-standby.ts';
