import { errorAt, type Position, QueryError } from './errors.ts';

/** Cloud Logging's limit on a query's length (characters). */
export const MAX_FILTER_LENGTH = 20_000;

export type TokenKind =
  | 'text' // a bare word: a field segment, a value, a keyword (AND OR NOT), `*`
  | 'string' // a quoted string, already unescaped
  | 'comparator'
  | '(' | ')' | ',' | '.' | '-'
  | 'eof';

export interface Token {
  kind: TokenKind;
  /** Unescaped text for strings, the raw characters otherwise. */
  value: string;
  at: Position;
  /** Offset just past the token, to tell adjacency (`-5` vs `- 5`, `f(` vs `f (`). */
  end: number;
}

const COMPARATORS = ['<=', '>=', '!=', '=~', '!~', '=', '<', '>', ':'] as const;
/** Characters that end a bare word (AIP-160 `TEXT`): whitespace and the grammar's punctuation. */
const WORD_BREAK = /[\s()"',:=<>!~.]/u;
const ESCAPES: Record<string, string> = { '"': '"', "'": "'", '\\': '\\', n: '\n', t: '\t', r: '\r' };

/** Splits a filter into tokens; `--` starts a comment that runs to the end of the line. */
export function tokenize(text: string): Token[] {
  if (text.length > MAX_FILTER_LENGTH) {
    throw new QueryError('TOO_LONG', `filter is ${text.length} characters; at most ${MAX_FILTER_LENGTH} are allowed`);
  }
  const tokens: Token[] = [];
  let offset = 0, line = 1, lineStart = 0;
  const here = (): Position => ({ offset, line, column: offset - lineStart + 1 });
  const push = (kind: TokenKind, value: string, at: Position): void => {
    tokens.push({ kind, value, at, end: offset });
  };
  while (offset < text.length) {
    const c = text[offset]!;
    if (c === '\n') {
      offset++;
      line++;
      lineStart = offset;
      continue;
    }
    if (/\s/u.test(c)) {
      offset++;
      continue;
    }
    const at = here();
    if (c === '-' && text[offset + 1] === '-') {
      while (offset < text.length && text[offset] !== '\n') offset++;
      continue;
    }
    if (c === '(' || c === ')' || c === ',' || c === '.' || c === '-') {
      offset++;
      push(c, c, at);
      continue;
    }
    const comparator = COMPARATORS.find((op) => text.startsWith(op, offset));
    if (comparator) {
      offset += comparator.length;
      push('comparator', comparator, at);
      continue;
    }
    if (c === '"' || c === "'") {
      push('string', readString(text, at, c), at);
      continue;
    }
    if (c === '!' || c === '~') throw errorAt('UNEXPECTED_CHARACTER', `unexpected '${c}'; expected a comparator such as != or =~`, at);
    // A word that starts with a digit keeps its dots: `3.5`, `1.5s`, `10.84.0.252` are one value.
    const digitStart = c >= '0' && c <= '9';
    while (offset < text.length) {
      const d = text[offset]!;
      if (d === '.' && digitStart) {
        offset++;
        continue;
      }
      if (WORD_BREAK.test(d)) break;
      // `--` inside a word is part of it; only a token-initial `--` is a comment.
      offset++;
    }
    push('text', text.slice(at.offset, offset), at);
  }
  tokens.push({ kind: 'eof', value: '', at: here(), end: offset });
  return tokens;

  function readString(source: string, start: Position, quote: string): string {
    let out = '';
    offset++;
    while (true) {
      if (offset >= source.length) throw errorAt('UNTERMINATED_STRING', `string opened here is never closed; expected ${quote}`, start);
      const ch = source[offset]!;
      if (ch === quote) {
        offset++;
        return out;
      }
      if (ch === '\n') {
        line++;
        lineStart = offset + 1;
      }
      if (ch !== '\\') {
        out += ch;
        offset++;
        continue;
      }
      const escapeAt = here();
      const e = source[offset + 1];
      if (e !== undefined && ESCAPES[e] !== undefined) {
        out += ESCAPES[e];
        offset += 2;
      } else if (e === 'u' && /^[0-9a-fA-F]{4}$/.test(source.slice(offset + 2, offset + 6))) {
        out += String.fromCharCode(parseInt(source.slice(offset + 2, offset + 6), 16));
        offset += 6;
      } else {
        throw errorAt('BAD_ESCAPE', `unknown escape '\\${e ?? ''}'; expected one of \\" \\\\ \\n \\t \\r \\uXXXX`, escapeAt);
      }
    }
  }
}
