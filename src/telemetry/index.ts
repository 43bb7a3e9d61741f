export { logger, componentLogger } from './logger.ts';
export { registry, serveMetrics, splitHostPort } from './metrics.ts';
export { loadNativeAddon } from './native.ts';
