/** Seed 002: the GKE Dataplane V2 `policy-action` record, field for field. */
export interface PolicyActionEndpoint {
  pod_name?: string;
  /** Deprecated in GKE's format but still written, as GKE does. */
  pod_namespace?: string;
  namespace?: string;
  workload_name?: string;
  workload_kind?: string;
  /** The IP address, when the endpoint is not a pod. */
  instance?: string;
}

export interface PolicyActionRecord {
  connection: {
    src_ip: string;
    dest_ip: string;
    src_port?: number;
    dest_port?: number;
    protocol: 'tcp' | 'udp' | 'sctp' | 'icmp';
    direction: 'ingress' | 'egress';
  };
  disposition: 'allow' | 'deny';
  /** Present only on allowed connections; `[{name: ""}]` for node-to-pod probe traffic. */
  policies?: { name: string; namespace?: string }[];
  src: PolicyActionEndpoint;
  dest: PolicyActionEndpoint;
  count: number;
  node_name: string;
  timestamp: string;
}
