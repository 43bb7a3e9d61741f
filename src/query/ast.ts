/**
 * The one typed AST every filter becomes. Boolean structure is explicit (n-ary AND/OR, NOT); a right-hand side
 * written as a boolean of literals (`f = ("a" OR "b")`) is distributed into comparisons by the parser, so the
 * compilers see only the shapes below.
 */
export type Comparator = '=' | '!=' | '<' | '<=' | '>' | '>=' | ':' | '=~' | '!~';

/** A field path: object keys from the LogEntry root (`["jsonPayload", "dest", "pod_name"]`). */
export type FieldPath = readonly string[];

/**
 * A literal. `text` is what the user wrote (unescaped); the other members are the readings it also has, and a
 * comparison uses the one that fits the stored value's type (see `docs/query.md`).
 */
export type Literal =
  | { kind: 'null' }
  | { kind: 'text'; text: string; number?: number; boolean?: boolean };

export type Expr =
  | { kind: 'all' }
  | { kind: 'and'; args: Expr[] }
  | { kind: 'or'; args: Expr[] }
  | { kind: 'not'; arg: Expr }
  | { kind: 'compare'; path: FieldPath; op: Comparator; value: Literal }
  /** `timestamp` / `receiveTimestamp` against a time; `micros` since the epoch, UTC. */
  | { kind: 'time'; path: FieldPath; op: '=' | '!=' | '<' | '<=' | '>' | '>='; micros: number; text: string }
  /** Ordering by rank on `severity` or the audit `jsonPayload.header.severity`. */
  | { kind: 'rank'; path: FieldPath; op: '<' | '<=' | '>' | '>='; rank: number; text: string }
  | { kind: 'present'; path: FieldPath }
  | { kind: 'global'; text: string }
  | { kind: 'search'; path?: FieldPath; text: string; tokens: string[] }
  | { kind: 'ipInNet'; path: FieldPath; cidr: string }
  | { kind: 'sample'; path: FieldPath; fraction: number }
  | { kind: 'logId'; logId: string };

export interface Filter {
  readonly root: Expr;
}
