/** Seed 000: one network egress record per connection attempt. The seed's fields keep their names. */
export type EgressNetworkType = 'direct' | 'agent proxy';

export interface EgressRecord {
  response_flags: 'success' | 'failed';
  request_size: number;
  response_size: number;
  destination_port: number;
  duration_ms: number;
  metadata: {
    /** Resource identifier of the egress policy the attempt was made with (null when none matched). */
    network_policy: string | null;
    /** Resource identifier of the data connection source the attempt was made for. */
    source: string | null;
    network_type: EgressNetworkType;
    /** Agent ids when the policy is an agent proxy; empty for direct egress. */
    network_resources: string[];
  };
  // Custos additions for debugging; none renames a seed field.
  /** The host the client asked for (a name or an IP literal). */
  destination_host?: string;
  /** The address the proxy checked and dialled (for agent proxy: the address the agent was told to dial). */
  destination_address?: string;
  /** Why the attempt failed, in Envoy's spirit (`no_matching_policy`, `dns_failure`, …); absent on success. */
  failure_reason?: string;
  /** One human sentence about the failure (which rule, which address, which error). */
  failure_detail?: string;
  /** How a successful connection ended (`completed`, `idle_timeout`, `draining`, …). */
  close_reason?: string;
  protocol?: 'connect' | 'http' | 'socks5';
  connection_id?: string;
  start_time?: string;
  end_time?: string;
  /** The client's address and port as the proxy saw it. */
  client_address?: string;
}
