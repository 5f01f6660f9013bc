export * from './drill.ts';
export * from './witness.ts';
