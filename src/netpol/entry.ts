import { LOG_IDS, logName, type LogEntryInput, type PolicyActionRecord } from '../model/index.ts';

/** The cluster a record's LogEntry names in `resource.labels`, as GKE's `k8s_node` resource does. */
export interface ClusterResource {
  project: string;
  cluster?: string;
  location?: string;
}

/**
 * A policy-action record as the LogEntry GKE writes: `logName` `projects/P/logs/policy-action`, resource `k8s_node`,
 * the record untouched as `jsonPayload`, so the seed's queries (`jsonPayload.disposition="deny"`) run unchanged.
 */
export function recordToEntry(record: PolicyActionRecord, resource: ClusterResource): LogEntryInput {
  return {
    logName: logName(resource.project, LOG_IDS.policyAction),
    timestamp: record.timestamp,
    severity: record.disposition === 'deny' ? 'WARNING' : 'INFO',
    resource: {
      type: 'k8s_node',
      labels: { project_id: resource.project, location: resource.location ?? '', cluster_name: resource.cluster ?? '', node_name: record.node_name },
    },
    labels: { disposition: record.disposition, direction: record.connection.direction },
    jsonPayload: record as unknown as Record<string, unknown>,
  };
}
