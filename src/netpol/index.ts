/** `custos netpol`'s public face: NetworkPolicy evaluation, policy-action records, and the demo for `custos serve`. */
export { runNetpol, loadForRun, type NetpolRunOptions, type NetpolRunSummary } from './run.ts';
export { recordToEntry, type ClusterResource } from './entry.ts';
export { startDemo, type DemoOptions } from './demo.ts';
export { explainConnection, parseExplainArgs, renderExplanation, type Explanation } from './explain.ts';
export { loadManifests, buildCluster, parseManifestText, ManifestWatcher, type ManifestLoad } from './manifests.ts';
export { evaluate, type Connection, type Verdict, type DirectionVerdict } from './evaluate.ts';
export { PolicyActionRecorder, type RecorderOptions } from './recorder.ts';
export { parseSettings, DEFAULT_SETTINGS, type NetpolSettings } from './settings.ts';
export { parseNetworkLogging, type LoggingSetting } from './logging.ts';
export { NetpolError, type NetpolErrorCode } from './errors.ts';
export type { Cluster } from './model.ts';
