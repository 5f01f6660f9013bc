export * from './restore-image.ts';
export * from './targets.ts';
export * from './metrics.ts';
export * from './run-claim.ts';
export { RESTORER_ENV_PREFIX, RESTORER_SCHEMA } from './restorer-config.ts';
