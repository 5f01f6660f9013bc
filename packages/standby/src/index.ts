export * from './keys.ts';
export * from './standby-store.ts';
