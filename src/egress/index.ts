/** `custos egress`: the egress proxy, its policy decision, agents, records and metrics. */
export { startDemo, DEMO_SOURCE } from './demo.ts';
export { EgressProxy, type EgressProxyOptions } from './proxy.ts';
export { runEgressService, type EgressService } from './service.ts';
export { startAgent, AgentPool, type AgentServer, type AgentServerOptions } from './agent.ts';
export {
  loadEgressConfig,
  parseEgressConfig,
  parseEgressYaml,
  EgressConfigError,
  type EgressConfig,
  type EgressPolicy,
  type EgressSource,
} from './config.ts';
export { decide, candidatePolicies, refusedRangeOf, type Decision } from './policy.ts';
export type { FailureReason, CloseReason } from './conn.ts';
export { createRecordOutput, type RecordOutput } from './output.ts';
export { toLogEntry, egressMetrics, EGRESS_RESOURCE_TYPE } from './metrics.ts';
