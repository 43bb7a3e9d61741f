/**
 * Kubernetes label selectors (apimachinery `metav1.LabelSelector`): `matchLabels` AND every `matchExpressions`
 * requirement. An empty selector matches everything; validation follows the API server's messages.
 */
export type Labels = Readonly<Record<string, string>>;

export interface LabelSelectorSpec {
  matchLabels?: Record<string, string>;
  matchExpressions?: { key: string; operator: string; values?: string[] }[];
}

export interface Selector {
  /** Readable form for `explain` (`app=web,tier in (a,b)`, or `{}` for everything). */
  readonly text: string;
  readonly matchesAll: boolean;
  matches(labels: Labels): boolean;
}

type Requirement = (labels: Labels) => boolean;

const QUALIFIED_NAME = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;

/** Problems in `selector` as `field: message` strings (empty when valid); `path` is the field path so far. */
export function selectorProblems(selector: unknown, path: string): string[] {
  if (selector === undefined || selector === null) return [];
  if (typeof selector !== 'object' || Array.isArray(selector)) return [`${path}: Invalid value: must be an object`];
  const problems: string[] = [];
  const { matchLabels, matchExpressions } = selector as Record<string, unknown>;
  if (matchLabels !== undefined && matchLabels !== null) {
    if (typeof matchLabels !== 'object' || Array.isArray(matchLabels)) problems.push(`${path}.matchLabels: Invalid value: must be a map of strings`);
    else
      for (const [key, value] of Object.entries(matchLabels)) {
        if (!QUALIFIED_NAME.test(key) || key.length > 316) problems.push(`${path}.matchLabels: Invalid value: "${key}": name part must consist of alphanumeric characters, '-', '_' or '.'`);
        if (typeof value !== 'string') problems.push(`${path}.matchLabels.${key}: Invalid value: must be a string`);
        else if (value.length > 63 || !LABEL_VALUE.test(value)) problems.push(`${path}.matchLabels: Invalid value: "${value}": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'`);
      }
  }
  if (matchExpressions !== undefined && matchExpressions !== null) {
    if (!Array.isArray(matchExpressions)) return [...problems, `${path}.matchExpressions: Invalid value: must be a list`];
    matchExpressions.forEach((raw: unknown, i) => {
      const at = `${path}.matchExpressions[${i}]`;
      const req = (raw ?? {}) as Record<string, unknown>;
      if (typeof req['key'] !== 'string' || !QUALIFIED_NAME.test(req['key'])) problems.push(`${at}.key: Invalid value: ${JSON.stringify(req['key'] ?? null)}: must be a qualified name`);
      const values = req['values'];
      const count = Array.isArray(values) ? values.length : 0;
      if (values !== undefined && values !== null && (!Array.isArray(values) || values.some((v) => typeof v !== 'string'))) problems.push(`${at}.values: Invalid value: must be a list of strings`);
      switch (req['operator']) {
        case 'In':
        case 'NotIn':
          if (count === 0) problems.push(`${at}.values: Required value: must be specified when \`operator\` is 'In' or 'NotIn'`);
          break;
        case 'Exists':
        case 'DoesNotExist':
          if (count > 0) problems.push(`${at}.values: Forbidden: may not be specified when \`operator\` is 'Exists' or 'DoesNotExist'`);
          break;
        default:
          problems.push(`${at}.operator: Unsupported value: ${JSON.stringify(req['operator'] ?? '')}: supported values: "DoesNotExist", "Exists", "In", "NotIn"`);
      }
    });
  }
  return problems;
}

/** Compiles a selector that `selectorProblems` accepted. `undefined` compiles to match-everything. */
export function compileSelector(spec: LabelSelectorSpec | undefined | null): Selector {
  const requirements: Requirement[] = [];
  const parts: string[] = [];
  for (const [key, value] of Object.entries(spec?.matchLabels ?? {})) {
    requirements.push((labels) => labels[key] === value);
    parts.push(`${key}=${value}`);
  }
  for (const { key, operator, values = [] } of spec?.matchExpressions ?? []) {
    const set = new Set(values);
    const list = `(${values.join(',')})`;
    switch (operator) {
      case 'In':
        requirements.push((labels) => labels[key] !== undefined && set.has(labels[key]));
        parts.push(`${key} in ${list}`);
        break;
      case 'NotIn':
        requirements.push((labels) => labels[key] === undefined || !set.has(labels[key]));
        parts.push(`${key} notin ${list}`);
        break;
      case 'Exists':
        requirements.push((labels) => labels[key] !== undefined);
        parts.push(key);
        break;
      default:
        requirements.push((labels) => labels[key] === undefined);
        parts.push(`!${key}`);
    }
  }
  const matchesAll = requirements.length === 0;
  return {
    text: matchesAll ? '{}' : parts.join(','),
    matchesAll,
    matches: matchesAll
      ? () => true
      : (labels) => {
          for (const requirement of requirements) if (!requirement(labels)) return false;
          return true;
        },
  };
}
