/** `custos netpol`'s public face: NetworkPolicy evaluation, policy-action records, and the demo for `custos serve`. */
export { runNetpol, loadForRun, type NetpolRunOptions, type NetpolRunSummary } from './run.ts';
export { recordToEntry, type ClusterResource } from './entry.ts';
