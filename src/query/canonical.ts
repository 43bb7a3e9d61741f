import type { Expr, FieldPath, Filter, Literal } from './ast.ts';

/**
 * The fully parenthesized form of a filter, for `custos read --explain`: every AND and OR group is wrapped, so
 * `a AND b OR c` shows as `(a AND (b OR c))`. Parsing the canonical form gives the same filter back.
 */
export function canonicalForm(filter: Filter): string {
  return print(filter.root);
}

function print(e: Expr): string {
  switch (e.kind) {
    case 'all': return '';
    case 'and': return `(${e.args.map(print).join(' AND ')})`;
    case 'or': return `(${e.args.map(print).join(' OR ')})`;
    case 'not': return `NOT ${print(e.arg)}`;
    case 'compare': return `${printPath(e.path)} ${e.op} ${printLiteral(e.value)}`;
    case 'time':
    case 'rank': return `${printPath(e.path)} ${e.op} ${quote(e.text)}`;
    case 'present': return `${printPath(e.path)}:*`;
    case 'global': return quote(e.text);
    case 'search': return e.path ? `SEARCH(${printPath(e.path)}, ${quote(e.text)})` : `SEARCH(${quote(e.text)})`;
    case 'ipInNet': return `ip_in_net(${printPath(e.path)}, ${quote(e.cidr)})`;
    case 'sample': return `sample(${printPath(e.path)}, ${e.fraction})`;
    case 'logId': return `log_id(${quote(e.logId)})`;
  }
}

const BARE_SEGMENT = /^[A-Za-z_][A-Za-z0-9_]*$/;

export function printPath(path: FieldPath): string {
  return path.map((s) => (BARE_SEGMENT.test(s) && s !== 'AND' && s !== 'OR' && s !== 'NOT' ? s : quote(s))).join('.');
}

function printLiteral(value: Literal): string {
  return value.kind === 'null' ? 'NULL_VALUE' : quote(value.text);
}

/** A double-quoted string using only the escapes the lexer reads back. */
export function quote(text: string): string {
  let out = '"';
  for (const ch of text) {
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\t') out += '\\t';
    else if (ch === '\r') out += '\\r';
    else if (ch < ' ' || ch === '\u007f') out += `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`;
    else out += ch;
  }
  return `${out}"`;
}
