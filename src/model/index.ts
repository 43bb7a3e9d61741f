export * from './entry.ts';
export * from './time.ts';
export * from './categories.ts';
export * from './validate.ts';
export type * from './policy-action.ts';
export type * from './egress.ts';
export type * from './data-proxy-audit.ts';
export type * from './platform-audit.ts';
