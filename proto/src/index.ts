export * from './wire.ts';
export * from './batching.ts';
