export * from './keys.ts';
export * from './standby-store.ts';
export * from './redis-safety.ts';
