import { RE2JS } from 're2js';
import ipaddr from 'ipaddr.js';
import { epochMicros, parseTimestamp } from '../model/index.ts';
import type { Comparator, Expr, FieldPath, Filter, Literal } from './ast.ts';
import { errorAt, type Position } from './errors.ts';
import { booleanReading, numberReading, rankTable, rankOf, searchTokens, TIME_FIELDS, TOP_LEVEL_FIELDS } from './fields.ts';
import { type Token, tokenize } from './lexer.ts';

/** Deepest nesting of parentheses and NOTs accepted; keeps recursion bounded on hostile input. */
export const MAX_DEPTH = 64;

const KEYWORDS = new Set(['AND', 'OR', 'NOT']);
const FUNCTIONS = new Set(['search', 'ip_in_net', 'sample', 'log_id']);

/**
 * Parses a Cloud Logging filter (AIP-160 plus Logging's additions). Precedence, loosest first:
 * AND (explicit or implied by juxtaposition) < OR < NOT / `-`. So `a AND b OR c` is `a AND (b OR c)`.
 */
export function parseFilter(text: string): Filter {
  return new Parser(tokenize(text)).parseFilter();
}

type ValueExpr =
  | { kind: 'literal'; value: Literal; at: Position; quoted: boolean }
  | { kind: 'and' | 'or'; args: ValueExpr[] }
  | { kind: 'not'; arg: ValueExpr };

class Parser {
  private pos = 0;
  private depth = 0;
  constructor(private readonly tokens: Token[]) {}

  parseFilter(): Filter {
    if (this.peek().kind === 'eof') return { root: { kind: 'all' } };
    const root = this.expression();
    const next = this.peek();
    if (next.kind === ')') throw errorAt('UNBALANCED_PARENTHESES', "unbalanced ')': no '(' is open", next.at);
    if (next.kind !== 'eof') throw this.unexpected(next, 'AND, OR or the end of the filter');
    return { root };
  }

  private expression(): Expr {
    const args = [this.sequence()];
    while (this.isKeyword('AND')) {
      this.pos++;
      args.push(this.sequence());
    }
    return args.length === 1 ? args[0]! : { kind: 'and', args };
  }

  /** Juxtaposed factors are ANDed (AIP-160 "sequence"). */
  private sequence(): Expr {
    const args = [this.factor()];
    while (this.startsOperand()) args.push(this.factor());
    return args.length === 1 ? args[0]! : { kind: 'and', args };
  }

  private factor(): Expr {
    const args = [this.term()];
    while (this.isKeyword('OR')) {
      this.pos++;
      args.push(this.term());
    }
    return args.length === 1 ? args[0]! : { kind: 'or', args };
  }

  private term(): Expr {
    const token = this.peek();
    if (this.isKeyword('NOT') || token.kind === '-') {
      this.pos++;
      return this.nested(token, () => ({ kind: 'not', arg: this.term() }));
    }
    if (token.kind === '(') {
      this.pos++;
      const inner = this.nested(token, () => this.expression());
      this.expectClose(token);
      return inner;
    }
    return this.restriction();
  }

  private restriction(): Expr {
    const start = this.peek();
    if (start.kind === 'text' && this.peekAt(1).kind === '(' && this.peekAt(1).at.offset === start.end) {
      const call = this.functionCall();
      if (this.peek().kind === 'comparator') throw this.unexpected(this.peek(), 'AND, OR, or the next restriction after a function call');
      return call;
    }
    if (start.kind !== 'text' && start.kind !== 'string') throw this.unexpected(start, 'a field, a value or (');
    const path = this.member();
    const comparator = this.peek();
    if (comparator.kind !== 'comparator') {
      // A bare value is a global restriction: a has-match against every string field.
      return { kind: 'global', text: path.segments.join('.') };
    }
    this.pos++;
    const fieldPath = this.fieldPath(path);
    if (comparator.value === ':' && this.peek().kind === 'text' && this.peek().value === '*') {
      this.pos++;
      return { kind: 'present', path: fieldPath };
    }
    const rhs = this.valueExpr(comparator);
    return this.distribute(fieldPath, comparator.value as Comparator, rhs);
  }

  /** `f op (a OR NOT b)` becomes `(f op a) OR NOT (f op b)`. */
  private distribute(path: FieldPath, op: Comparator, rhs: ValueExpr): Expr {
    switch (rhs.kind) {
      case 'literal': return this.comparison(path, op, rhs);
      case 'not': return { kind: 'not', arg: this.distribute(path, op, rhs.arg) };
      default: return { kind: rhs.kind, args: rhs.args.map((a) => this.distribute(path, op, a)) };
    }
  }

  private comparison(path: FieldPath, op: Comparator, rhs: Extract<ValueExpr, { kind: 'literal' }>): Expr {
    const value = rhs.value;
    const field = path.join('.');
    if (op === '=~' || op === '!~') {
      if (value.kind !== 'text') throw errorAt('BAD_REGEX', 'a regular expression must be a string, not NULL_VALUE', rhs.at);
      try {
        RE2JS.compile(value.text);
      } catch (e) {
        throw errorAt('BAD_REGEX', `bad regular expression ${JSON.stringify(value.text)}: ${(e as Error).message}`, rhs.at);
      }
      return { kind: 'compare', path, op, value };
    }
    if (path.length === 1 && TIME_FIELDS.has(field) && op !== ':') {
      const parsed = value.kind === 'text' ? parseTimestamp(value.text) : undefined;
      if (!parsed) throw errorAt('BAD_TIMESTAMP', `${field} compares by time; expected an RFC 3339 timestamp such as "2020-06-22T06:30:51.128Z"`, rhs.at);
      const micros = epochMicros(parsed);
      return { kind: 'time', path, op, micros, text: new Date(Math.floor(micros / 1000)).toISOString().slice(0, 19) + microsFraction(micros) };
    }
    const ranks = rankTable(path);
    if (ranks && (op === '<' || op === '<=' || op === '>' || op === '>=')) {
      const rank = value.kind === 'text' ? rankOf(ranks, value.text) : -1;
      if (rank < 0) throw errorAt('BAD_VALUE', `${field} compares by rank; expected one of ${ranks.join(', ')}`, rhs.at);
      return { kind: 'rank', path, op, rank, text: ranks[rank]! };
    }
    return { kind: 'compare', path, op, value };
  }

  /** The right-hand side: a literal, or a parenthesized boolean of literals. */
  private valueExpr(after: Token): ValueExpr {
    const token = this.peek();
    if (token.kind === '(') {
      this.pos++;
      const inner = this.nested(token, () => this.valueOr(after, true));
      this.expectClose(token);
      return inner;
    }
    return this.valueLiteral(after);
  }

  private valueOr(after: Token, inParens: boolean): ValueExpr {
    // Same precedence as the outer grammar: AND (explicit or juxtaposed) < OR < NOT.
    const ands: ValueExpr[] = [];
    do {
      if (ands.length > 0 && this.isKeyword('AND')) this.pos++;
      const ors: ValueExpr[] = [this.valueUnary(after)];
      while (this.isKeyword('OR')) {
        this.pos++;
        ors.push(this.valueUnary(after));
      }
      ands.push(ors.length === 1 ? ors[0]! : { kind: 'or', args: ors });
    } while (inParens && (this.isKeyword('AND') || this.startsOperand()));
    return ands.length === 1 ? ands[0]! : { kind: 'and', args: ands };
  }

  private valueUnary(after: Token): ValueExpr {
    const token = this.peek();
    if (this.isKeyword('NOT')) {
      this.pos++;
      return this.nested(token, () => ({ kind: 'not', arg: this.valueUnary(after) }));
    }
    if (token.kind === '(') {
      this.pos++;
      const inner = this.nested(token, () => this.valueOr(after, true));
      this.expectClose(token);
      return inner;
    }
    return this.valueLiteral(after);
  }

  private valueLiteral(after: Token): Extract<ValueExpr, { kind: 'literal' }> {
    const token = this.peek();
    let text: string;
    if (token.kind === '-' && this.peekAt(1).kind === 'text' && this.peekAt(1).at.offset === token.end) {
      this.pos += 2;
      text = `-${this.tokens[this.pos - 1]!.value}`;
    } else if (token.kind === 'string' || (token.kind === 'text' && !KEYWORDS.has(token.value))) {
      this.pos++;
      text = token.value;
    } else {
      throw this.unexpected(token, `a value after ${after.value}`);
    }
    const next = this.peek();
    if (next.kind === '.' || (next.kind === '(' && next.at.offset === this.tokens[this.pos - 1]!.end)) {
      throw errorAt('FIELD_ON_RIGHT', `a field or function on the right side of ${after.value} is not allowed; quote the value if it is text`, token.at);
    }
    const quoted = token.kind === 'string';
    if (!quoted && text === 'NULL_VALUE') return { kind: 'literal', value: { kind: 'null' }, at: token.at, quoted };
    const value: Literal = { kind: 'text', text };
    const n = numberReading(text);
    if (n !== undefined) value.number = n;
    const b = booleanReading(text);
    if (b !== undefined) value.boolean = b;
    return { kind: 'literal', value, at: token.at, quoted };
  }

  private functionCall(): Expr {
    const nameToken = this.peek();
    const name = nameToken.value.toLowerCase();
    if (!FUNCTIONS.has(name)) {
      throw errorAt('UNKNOWN_FUNCTION', `unknown function ${nameToken.value}(); expected SEARCH, ip_in_net, sample or log_id`, nameToken.at);
    }
    this.pos += 2;
    const args: { path?: { segments: string[]; at: Position; simple: boolean }; literal?: string; at: Position }[] = [];
    while (this.peek().kind !== ')') {
      if (args.length > 0) this.expect(',', `',' or ')' in ${nameToken.value}()`);
      const arg = this.peek();
      if (arg.kind === 'string') {
        this.pos++;
        args.push({ literal: arg.value, at: arg.at });
      } else if (arg.kind === 'text') {
        const member = this.member();
        args.push({ path: member, literal: member.segments.join('.'), at: arg.at });
      } else if (arg.kind === '-' && this.peekAt(1).kind === 'text') {
        this.pos += 2;
        args.push({ literal: `-${this.tokens[this.pos - 1]!.value}`, at: arg.at });
      } else {
        throw this.unexpected(arg, `an argument of ${nameToken.value}()`);
      }
      if (args.length > 3) throw errorAt('BAD_ARGUMENT', `too many arguments to ${nameToken.value}()`, arg.at);
    }
    const close = this.peek();
    this.pos++;
    const fieldArg = (i: number): FieldPath => {
      const a = args[i]!;
      if (!a.path) throw errorAt('BAD_ARGUMENT', `argument ${i + 1} of ${nameToken.value}() must be a field`, a.at);
      return this.fieldPath(a.path);
    };
    const arity = (n: number): void => {
      if (args.length !== n) throw errorAt('BAD_ARGUMENT', `${nameToken.value}() takes ${n} argument${n === 1 ? '' : 's'}, got ${args.length}`, close.at);
    };
    switch (name) {
      case 'search': {
        if (args.length !== 1 && args.length !== 2) arity(2);
        const textArg = args[args.length - 1]!;
        const tokens = searchTokens(textArg.literal!);
        if (tokens.length === 0) throw errorAt('BAD_ARGUMENT', 'SEARCH() needs text with at least one letter or digit', textArg.at);
        return args.length === 2
          ? { kind: 'search', path: fieldArg(0), text: textArg.literal!, tokens }
          : { kind: 'search', text: textArg.literal!, tokens };
      }
      case 'ip_in_net': {
        arity(2);
        const cidr = args[1]!;
        try {
          ipaddr.parseCIDR(cidr.literal!);
        } catch {
          throw errorAt('BAD_ARGUMENT', `ip_in_net() expects a CIDR range such as "10.0.0.0/8" or "2001:db8::/32", got ${JSON.stringify(cidr.literal)}`, cidr.at);
        }
        return { kind: 'ipInNet', path: fieldArg(0), cidr: cidr.literal! };
      }
      case 'sample': {
        arity(2);
        const fraction = numberReading(args[1]!.literal ?? '');
        if (fraction === undefined || fraction < 0 || fraction > 1) {
          throw errorAt('BAD_ARGUMENT', 'sample() expects a fraction between 0 and 1', args[1]!.at);
        }
        return { kind: 'sample', path: fieldArg(0), fraction };
      }
      default: {
        arity(1);
        return { kind: 'logId', logId: args[0]!.literal! };
      }
    }
  }

  /** A dotted member: bare words or quoted segments (`labels."k8s.io/app"`). */
  private member(): { segments: string[]; at: Position; simple: boolean } {
    const first = this.peek();
    const segments: string[] = [];
    let simple = true;
    while (true) {
      const token = this.peek();
      if (token.kind === 'string') simple = false;
      else if (token.kind !== 'text' || (segments.length === 0 && KEYWORDS.has(token.value))) {
        throw this.unexpected(token, segments.length === 0 ? 'a field or a value' : 'a field name after .');
      }
      segments.push(token.value);
      this.pos++;
      if (this.peek().kind !== '.') break;
      this.pos++;
    }
    return { segments, at: first.at, simple };
  }

  private fieldPath(member: { segments: string[]; at: Position }): FieldPath {
    for (const segment of member.segments) {
      if (/^[0-9]/.test(segment)) {
        throw errorAt('ARRAY_INDEX', `indexing into arrays ("${segment}") is not supported; a path through an array matches any element`, member.at);
      }
    }
    const [head] = member.segments;
    if (!TOP_LEVEL_FIELDS.has(head!)) {
      throw errorAt('UNKNOWN_FIELD', `unknown field ${JSON.stringify(head)}; expected one of ${[...TOP_LEVEL_FIELDS].join(', ')}`, member.at);
    }
    return member.segments;
  }

  private nested<T>(token: Token, parse: () => T): T {
    if (++this.depth > MAX_DEPTH) throw errorAt('TOO_DEEP', `nesting deeper than ${MAX_DEPTH} levels`, token.at);
    try {
      return parse();
    } finally {
      this.depth--;
    }
  }

  private expectClose(open: Token): void {
    const token = this.peek();
    if (token.kind === ')') {
      this.pos++;
      return;
    }
    if (token.kind === 'eof') throw errorAt('UNBALANCED_PARENTHESES', "unbalanced '(': expected ')' before the end of the filter", open.at);
    throw this.unexpected(token, "')'");
  }

  private expect(kind: Token['kind'], what: string): void {
    const token = this.peek();
    if (token.kind !== kind) throw this.unexpected(token, what);
    this.pos++;
  }

  /** Whether the next token can start another operand (a term, or a literal inside a parenthesized value). */
  private startsOperand(): boolean {
    const t = this.peek();
    return t.kind === '(' || t.kind === '-' || t.kind === 'string' || (t.kind === 'text' && t.value !== 'AND' && t.value !== 'OR');
  }

  private isKeyword(word: string): boolean {
    const t = this.peek();
    return t.kind === 'text' && t.value === word;
  }

  private peek(): Token {
    return this.tokens[this.pos]!;
  }

  private peekAt(ahead: number): Token {
    return this.tokens[Math.min(this.pos + ahead, this.tokens.length - 1)]!;
  }

  private unexpected(token: Token, expected: string) {
    const found = token.kind === 'eof' ? 'the end of the filter' : `'${token.value}'`;
    return errorAt('UNEXPECTED_TOKEN', `unexpected ${found}; expected ${expected}`, token.at);
  }
}

function microsFraction(micros: number): string {
  const frac = ((micros % 1_000_000) + 1_000_000) % 1_000_000;
  return frac === 0 ? 'Z' : `.${String(frac).padStart(6, '0').replace(/0+$/, '')}Z`;
}
