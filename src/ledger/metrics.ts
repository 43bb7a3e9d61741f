import { Counter, Histogram } from 'prom-client';
import { registry } from '../telemetry/index.ts';

// No organization label: a reader of one organization must not learn the names of others from /metrics.
export const ledgerMetrics = {
  commits: new Counter({ name: 'custos_ledger_commits_total', help: 'Group commits (one write and one fdatasync each) that succeeded', registers: [registry] }),
  commitErrors: new Counter({ name: 'custos_ledger_commit_errors_total', help: 'Group commits that failed; none of their entries was acknowledged', registers: [registry] }),
  entries: new Counter({ name: 'custos_ledger_entries_appended_total', help: 'Entries made durable in the ledger', registers: [registry] }),
  commitSeconds: new Histogram({ name: 'custos_ledger_commit_duration_seconds', help: 'Time to write and fdatasync one group commit', buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1], registers: [registry] }),
  checkpoints: new Counter({ name: 'custos_ledger_checkpoints_total', help: 'Checkpoints signed and persisted', registers: [registry] }),
  archivedSegments: new Counter({ name: 'custos_ledger_archived_segments_total', help: 'Sealed segments copied to the archive with their manifest', registers: [registry] }),
};
