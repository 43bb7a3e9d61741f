import { parse } from 'yaml';
import { z } from 'zod';
import { NetpolError } from './errors.ts';

/**
 * The numbers GKE fixes and Custos lets `--config` change (seed 002): rate limit per node, deny aggregation window and
 * open-key bound, log file rotation, and the datagram connection timeout.
 */
export interface NetpolSettings {
  /** Records per second per node; 0 turns the limit off. */
  rateLimitPerSecond: number;
  denyAggregationWindowSeconds: number;
  denyAggregationMaxKeys: number;
  rotateBytes: number;
  rotateKeep: number;
  connectionTimeoutSeconds: number;
}

export const DEFAULT_SETTINGS: NetpolSettings = {
  rateLimitPerSecond: 500,
  denyAggregationWindowSeconds: 5,
  denyAggregationMaxKeys: 3000,
  rotateBytes: 10 * 1024 * 1024,
  rotateKeep: 5,
  connectionTimeoutSeconds: 60,
};

const schema = z
  .object({
    rateLimitPerSecond: z.number().min(0),
    denyAggregationWindowSeconds: z.number().positive().max(3600),
    denyAggregationMaxKeys: z.number().int().min(1).max(10_000_000),
    rotateBytes: z.number().int().min(1024),
    rotateKeep: z.number().int().min(0).max(1000),
    connectionTimeoutSeconds: z.number().positive().max(86_400),
  })
  .partial()
  .strict();

/** Reads a `--config` YAML text; unknown keys and bad values are errors naming the field. */
export function parseSettings(text: string, source: string): NetpolSettings {
  let raw: unknown;
  try {
    raw = parse(text) ?? {};
  } catch (err) {
    throw new NetpolError('INVALID_CONFIG', `${source}: malformed YAML: ${(err as Error).message.split('\n')[0]}`);
  }
  const result = schema.safeParse(raw);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    const field = issue.path.join('.') || (issue.code === 'unrecognized_keys' ? issue.keys.join(', ') : '(top level)');
    throw new NetpolError('INVALID_CONFIG', `${source}: ${field}: ${issue.message}`);
  }
  return { ...DEFAULT_SETTINGS, ...result.data };
}
