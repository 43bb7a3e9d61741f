import { LOG_IDS } from './entry.ts';

/**
 * JSON Schemas of the seed payloads, applied on ingest when an entry's log id is one Custos defines. They require the
 * seeds' fields with the seeds' types and let any further field through, so producers may add what helps a user.
 */
type Schema = Record<string, unknown>;

const str = { type: 'string' };
const nullableString = { type: ['string', 'null'] };
const port = { type: 'integer', minimum: 0, maximum: 65535 };
const object = (properties: Record<string, Schema>, required: string[] = Object.keys(properties)): Schema => ({ type: 'object', properties, required });
const optional = (properties: Record<string, Schema>): Schema => object(properties, []);

const endpoint = optional({ pod_name: str, pod_namespace: str, namespace: str, workload_name: str, workload_kind: str, instance: str });

const policyAction = object(
  {
    connection: object(
      { src_ip: str, dest_ip: str, src_port: port, dest_port: port, protocol: { enum: ['tcp', 'udp', 'sctp', 'icmp'] }, direction: { enum: ['ingress', 'egress'] } },
      ['src_ip', 'dest_ip', 'protocol', 'direction'],
    ),
    disposition: { enum: ['allow', 'deny'] },
    policies: { type: 'array', items: object({ name: str, namespace: str }, ['name']) },
    src: endpoint,
    dest: endpoint,
    count: { type: 'integer', minimum: 1 },
    node_name: str,
    timestamp: str,
  },
  ['connection', 'disposition', 'src', 'dest', 'count', 'node_name', 'timestamp'],
);

const egress = object({
  response_flags: { enum: ['success', 'failed'] },
  request_size: { type: 'integer', minimum: 0 },
  response_size: { type: 'integer', minimum: 0 },
  destination_port: port,
  duration_ms: { type: 'number', minimum: 0 },
  metadata: object({
    network_policy: nullableString,
    source: nullableString,
    network_type: { enum: ['direct', 'agent proxy'] },
    network_resources: { type: 'array', items: str },
  }),
});

const dataProxyAudit = object({
  header: object({
    id: str,
    event: object({ eventTime: str, eventType: str, action: str }),
    initiator: object({ id: nullableString, typeURI: str }),
    observer: object({ id: str }),
    status: object({ outcome: { enum: ['SUCCESS', 'FAILURE'] } }),
    target: object({ id: str, typeURI: str }),
    severity: { enum: ['NORMAL', 'WARNING', 'CRITICAL'] },
  }),
  attachments: { type: 'array', items: { type: 'object' } },
});

const platformAudit = object({
  action: { type: 'string', pattern: '^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)+$' },
  outcome: { enum: ['SUCCESS', 'FAILURE'] },
  actor: { type: 'object' },
});

export const PAYLOAD_SCHEMAS: Record<string, Schema> = {
  [LOG_IDS.policyAction]: policyAction,
  [LOG_IDS.networkEgress]: egress,
  [LOG_IDS.dataProxyAudit]: dataProxyAudit,
  [LOG_IDS.audit]: platformAudit,
};
