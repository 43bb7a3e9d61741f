import { lookup } from 'node:dns/promises';
import { canonicalHost, type EgressConfig } from './config.ts';
import { ipLiteral } from './policy.ts';

/**
 * Resolves a destination name once per attempt. The answer is what the policy checks and what the proxy dials, so
 * a second lookup (the DNS rebinding window) never happens.
 */
export interface Resolver {
  resolve(name: string): Promise<string[]>;
}

export class ResolveError extends Error {
  constructor(
    readonly code: 'NOT_FOUND' | 'TIMEOUT',
    message: string,
  ) {
    super(message);
    this.name = 'ResolveError';
  }
}

/** The static host map first (tests, air-gapped sites), then the system resolver when enabled. */
export function createResolver(settings: EgressConfig['resolver']): Resolver {
  return {
    async resolve(name: string): Promise<string[]> {
      const literal = ipLiteral(name);
      if (literal) return [literal.toString()];
      const mapped = settings.hosts[canonicalHost(name)];
      if (mapped) return mapped;
      if (!settings.system) throw new ResolveError('NOT_FOUND', `${name} is not in the resolver's host map`);
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new ResolveError('TIMEOUT', `resolving ${name} took over ${settings.timeoutMs} ms`)), settings.timeoutMs);
      });
      try {
        const answers = await Promise.race([lookup(name, { all: true, verbatim: true }), timeout]);
        if (answers.length === 0) throw new ResolveError('NOT_FOUND', `${name} has no addresses`);
        return [...new Set(answers.map((a) => a.address))];
      } catch (err) {
        if (err instanceof ResolveError) throw err;
        throw new ResolveError('NOT_FOUND', `${name}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      } finally {
        clearTimeout(timer);
      }
    },
  };
}
