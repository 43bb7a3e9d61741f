/**
 * Statement templates for the simple protocol: `... WHERE aid = 42` and `... WHERE aid = 7` share one rewrite.
 * Plain numeric and single-quoted string literals become numbered parameters (`$9001`, …); the template is
 * rewritten once (cached), and the literals go back into the rewritten text at the same parameters.
 *
 * The scanner is deliberately narrow: it gives up (and the statement takes the full path) on anything whose
 * lexing it does not fully own: comments, dollar quoting, parameters, escape/bit/hex/Unicode string prefixes,
 * non-decimal or underscored numbers. Literal tokens cannot change what the rewrite decides (relation and function
 * names are never literals), and where a literal is not interchangeable with a parameter (typed literals,
 * `SET`, `COPY … TO 'file'`, `FETCH 5`), the template does not parse and the statement takes the full path.
 */

/** The first parameter number; high so it cannot clash with anything in the proxy's own masking SQL. */
const FIRST_PARAMETER = 9001;
const MAX_LITERALS = 1000;

export interface Template {
  text: string;
  literals: string[];
}

const isIdentifierChar = (c: number): boolean =>
  (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c === 0x5f || c === 0x24 || c >= 0x80;
const isDigit = (c: number): boolean => c >= 0x30 && c <= 0x39;
/** ASCII whitespace and every non-ASCII character: more than SQL's whitespace, so the check above fails closed. */
const mayBeSpace = (c: number): boolean => c === 0x20 || (c >= 0x09 && c <= 0x0d) || c >= 0x80;

export function templateOf(sql: string): Template | undefined {
  if (sql.includes('--') || sql.includes('/*') || sql.includes('$') || sql.includes('\\')) return undefined;
  const literals: string[] = [];
  let out = '';
  let last = 0;
  let i = 0;
  const n = sql.length;
  while (i < n) {
    const c = sql.charCodeAt(i);
    if (c === 0x22 /* " */) {
      // A quoted identifier: skip it whole ("" is an escaped quote).
      i++;
      while (i < n && !(sql.charCodeAt(i) === 0x22 && sql.charCodeAt(i + 1) !== 0x22)) i += sql.charCodeAt(i) === 0x22 ? 2 : 1;
      if (i >= n) return undefined;
      i++;
      continue;
    }
    if (c === 0x27 /* ' */) {
      if (i > 0 && (isIdentifierChar(sql.charCodeAt(i - 1)) || sql.charCodeAt(i - 1) === 0x26 /* & */)) return undefined;
      const start = i;
      i++;
      while (i < n && !(sql.charCodeAt(i) === 0x27 && sql.charCodeAt(i + 1) !== 0x27)) i += sql.charCodeAt(i) === 0x27 ? 2 : 1;
      if (i >= n) return undefined;
      i++;
      // Adjacent literals separated by a newline are one literal in SQL: leave such text to the full path.
      let next = i;
      while (next < n && mayBeSpace(sql.charCodeAt(next))) next++;
      if (sql.charCodeAt(next) === 0x27) return undefined;
      out += sql.slice(last, start) + `$${FIRST_PARAMETER + literals.length}`;
      literals.push(sql.slice(start, i));
      last = i;
      continue;
    }
    if (isDigit(c) && (i === 0 || (!isIdentifierChar(sql.charCodeAt(i - 1)) && sql.charCodeAt(i - 1) !== 0x2e /* . */))) {
      const start = i;
      while (i < n && isDigit(sql.charCodeAt(i))) i++;
      if (sql.charCodeAt(i) === 0x2e) {
        i++;
        while (i < n && isDigit(sql.charCodeAt(i))) i++;
      }
      if (sql.charCodeAt(i) === 0x65 || sql.charCodeAt(i) === 0x45) return undefined;
      if (i < n && (isIdentifierChar(sql.charCodeAt(i)) || sql.charCodeAt(i) === 0x2e)) return undefined;
      out += sql.slice(last, start) + `$${FIRST_PARAMETER + literals.length}`;
      literals.push(sql.slice(start, i));
      last = i;
      continue;
    }
    if (c === 0x2e /* . */ && isDigit(sql.charCodeAt(i + 1))) return undefined;
    if (isIdentifierChar(c)) {
      while (i < n && isIdentifierChar(sql.charCodeAt(i))) i++;
      continue;
    }
    i++;
  }
  if (literals.length === 0 || literals.length > MAX_LITERALS) return undefined;
  return { text: out + sql.slice(last), literals };
}

/**
 * Puts the literals back into a rewritten template. Undefined when the rewritten text lost a parameter: the caller
 * then takes the full path. (A parameter may appear twice: a predicate copied into the filter fence.)
 */
export function fillTemplate(rewritten: string, literals: string[]): string | undefined {
  let text = '';
  let last = 0;
  let seen = 0;
  const counted = new Uint8Array(literals.length);
  for (let at = rewritten.indexOf('$'); at >= 0; at = rewritten.indexOf('$', at + 1)) {
    let end = at + 1;
    let number = 0;
    while (end < rewritten.length && isDigit(rewritten.charCodeAt(end))) number = number * 10 + rewritten.charCodeAt(end++) - 0x30;
    // `$12` in `$123` is not a parameter: the whole digit run is the number, as in PostgreSQL's lexer.
    const index = number - FIRST_PARAMETER;
    if (end === at + 1 || index < 0 || index >= literals.length) continue;
    text += rewritten.slice(last, at) + literals[index]!;
    last = end;
    if (counted[index] === 0) {
      counted[index] = 1;
      seen++;
    }
  }
  return seen === literals.length ? text + rewritten.slice(last) : undefined;
}
