export * from './restore-image.ts';
export * from './targets.ts';
export * from './metrics.ts';
