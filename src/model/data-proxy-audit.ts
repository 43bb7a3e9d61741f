/** Seed 003: the data proxy's audit event (`header` / `attachments`), as its examples write it. */
export interface AuditField {
  assetId?: string;
  assetName?: string;
  catalog: string;
  schema: string;
  table: string;
  field: string;
}

export type TransformationParameters = Record<string, unknown>;

/** Exactly one transformation key: constant, drop, generalizeDate, numericRegex, redactWithNull, regex, retain, truncate. */
export type SingleFieldTransformation = { transformationName?: string } & Record<string, TransformationParameters | string | undefined>;

export interface AuditTransformation {
  field: AuditField[];
  singleFieldTransformation?: SingleFieldTransformation;
  cellLevelTransformation?: {
    ifAndElseIfs: {
      logicalExpression: { expression: string; field: AuditField[] };
      transformation: { singleFieldTransformation: SingleFieldTransformation };
    }[];
    else?: { singleFieldTransformation: SingleFieldTransformation };
  };
}

export interface AuditAttachment {
  source?: { namespace?: string; pod?: string };
  correlationId?: string;
  userId?: string;
  request?: { query?: string; metadata?: string };
  responseData?: unknown;
  requestData?: {
    context?: Record<string, unknown>;
    fieldTriggers?: unknown[];
    filters?: { field: AuditField; expression: string }[];
    transformations?: AuditTransformation[];
    request?: { query?: string; metadata?: string };
    dataPlane?: { id: string };
    rlacFilterBehaviour?: 'DENY_ACCESS' | 'ALLOW_ACCESS';
    [key: string]: unknown;
  };
  [key: string]: unknown;
}

export interface DataProxyAuditEvent {
  header: {
    id: string;
    event: { eventTime: string; eventType: string; action: string };
    initiator: { id: string | null; typeURI: string; tenant?: string | null; sourceIp?: string | null };
    observer: { id: string };
    status: { outcome: 'SUCCESS' | 'FAILURE'; reason?: { message: string } | string | null };
    target: { id: string; typeURI: string };
    severity: 'NORMAL' | 'WARNING' | 'CRITICAL';
  };
  attachments: AuditAttachment[];
}
