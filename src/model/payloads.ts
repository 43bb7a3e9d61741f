import { z } from 'zod';
import { LOG_IDS } from './entry.ts';

/**
 * Checks for the seed payloads, applied on ingest when an entry's log id is one Custos defines. They require the
 * seeds' fields with the seeds' types and let any further field through, so producers may add what helps a user.
 */
const endpoint = z.looseObject({
  pod_name: z.string().optional(),
  pod_namespace: z.string().optional(),
  namespace: z.string().optional(),
  workload_name: z.string().optional(),
  workload_kind: z.string().optional(),
  instance: z.string().optional(),
});
const port = z.number().int().min(0).max(65535);

const policyAction = z.looseObject({
  connection: z.looseObject({
    src_ip: z.string(),
    dest_ip: z.string(),
    src_port: port.optional(),
    dest_port: port.optional(),
    protocol: z.enum(['tcp', 'udp', 'sctp', 'icmp']),
    direction: z.enum(['ingress', 'egress']),
  }),
  disposition: z.enum(['allow', 'deny']),
  policies: z.array(z.looseObject({ name: z.string(), namespace: z.string().optional() })).optional(),
  src: endpoint,
  dest: endpoint,
  count: z.number().int().min(1),
  node_name: z.string(),
  timestamp: z.string(),
});

const egress = z.looseObject({
  response_flags: z.enum(['success', 'failed']),
  request_size: z.number().int().min(0),
  response_size: z.number().int().min(0),
  destination_port: port,
  duration_ms: z.number().min(0),
  metadata: z.looseObject({
    network_policy: z.string().nullable(),
    source: z.string().nullable(),
    network_type: z.enum(['direct', 'agent proxy']),
    network_resources: z.array(z.string()),
  }),
});

const dataProxyAudit = z.looseObject({
  header: z.looseObject({
    id: z.string(),
    event: z.looseObject({ eventTime: z.string(), eventType: z.string(), action: z.string() }),
    initiator: z.looseObject({ id: z.string().nullable(), typeURI: z.string() }),
    observer: z.looseObject({ id: z.string() }),
    status: z.looseObject({ outcome: z.enum(['SUCCESS', 'FAILURE']) }),
    target: z.looseObject({ id: z.string(), typeURI: z.string() }),
    severity: z.enum(['NORMAL', 'WARNING', 'CRITICAL']),
  }),
  attachments: z.array(z.record(z.string(), z.unknown())),
});

const platformAudit = z.looseObject({
  action: z.string().regex(/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$/, 'must be object.action, e.g. user.login'),
  outcome: z.enum(['SUCCESS', 'FAILURE']),
  actor: z.looseObject({}),
});

export const PAYLOAD_SCHEMAS: Record<string, z.ZodType> = {
  [LOG_IDS.policyAction]: policyAction,
  [LOG_IDS.networkEgress]: egress,
  [LOG_IDS.dataProxyAudit]: dataProxyAudit,
  [LOG_IDS.audit]: platformAudit,
};
