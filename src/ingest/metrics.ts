import { Counter, Gauge, Histogram } from 'prom-client';
import { registry } from '../telemetry/index.ts';

export const ingestMetrics = {
  entries: new Counter({ name: 'custos_ingest_entries_total', help: 'Entries appended to the ledger', labelNames: ['org'], registers: [registry] }),
  failures: new Counter({ name: 'custos_ingest_failures_total', help: 'Batches the ledger could not append', labelNames: ['org'], registers: [registry] }),
  appendSeconds: new Histogram({
    name: 'custos_ledger_append_seconds',
    help: 'Time from append to durable (group commit included)',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
    registers: [registry],
  }),
  treeSize: new Gauge({ name: 'custos_ledger_tree_size', help: 'Entries in the organization ledger', labelNames: ['org'], registers: [registry] }),
  indexLag: new Gauge({ name: 'custos_index_lag_entries', help: 'Ledger entries not yet in the index', labelNames: ['org'], registers: [registry] }),
};
