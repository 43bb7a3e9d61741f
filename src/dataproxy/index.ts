/** `custos dataproxy`: a PostgreSQL wire-protocol proxy that masks, filters rows and audits every query (seed 003). */
export { startDemo, AUTHORS_PRIVACY_POLICY, DEMO_CONFIG, DEMO_USER, DEMO_PASSWORD } from './demo.ts';
export { startDataProxy, type DataProxyOptions, type RunningDataProxy } from './proxy.ts';
export { loadConfig, buildConfig, type DataProxyConfig } from './config.ts';
export { DataProxyError, type DataProxyErrorCode } from './errors.ts';
export { createVerifier, formatVerifier } from './scram.ts';
