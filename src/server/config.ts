import { readFile } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { DEFAULT_LIMITS } from '../model/index.ts';

const DURATION = /^(\d+)(ms|s|m|h|d)$/;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

export function parseDuration(text: string): number | undefined {
  const m = DURATION.exec(text.trim());
  return m ? Number(m[1]) * UNIT_MS[m[2]!]! : undefined;
}

const duration = z.string().refine((s) => parseDuration(s) !== undefined, 'must be a duration like 500ms, 30s, 15m, 24h, 1d');

const configSchema = z
  .object({
    data: z.string().default('data'),
    listen: z.string().default('127.0.0.1:8080'),
    project: z.string().regex(/^[a-z][a-z0-9-]{0,62}$/).default('custos'),
    archive: z
      .object({
        dir: z.string().optional(),
        // No credentials here: they come from the environment only, so a config file never holds a secret.
        s3: z
          .object({
            bucket: z.string().min(1),
            region: z.string().min(1),
            endpoint: z.url({ protocol: /^https?$/ }).optional(),
            prefix: z.string().optional(),
            addressing: z.enum(['path', 'virtual']).default('path'),
          })
          .strict()
          .optional(),
        maxDelay: duration.default('24h'),
      })
      .strict()
      .refine((archive) => (archive.dir === undefined) !== (archive.s3 === undefined), 'give exactly one of dir or s3')
      .optional(),
    limits: z
      .object({
        maxEntryBytes: z.number().int().positive().default(DEFAULT_LIMITS.maxEntryBytes),
        maxRequestBytes: z.number().int().positive().default(64 * 1024 * 1024),
        maxDepth: z.number().int().positive().default(DEFAULT_LIMITS.maxDepth),
      })
      .strict()
      .default({ maxEntryBytes: DEFAULT_LIMITS.maxEntryBytes, maxRequestBytes: 64 * 1024 * 1024, maxDepth: DEFAULT_LIMITS.maxDepth }),
  })
  .strict();

export type ServeConfig = z.infer<typeof configSchema>;

/** Reads `custos serve --config FILE`; errors name the path of the bad value. */
export async function loadServeConfig(file?: string): Promise<ServeConfig> {
  let raw: unknown = {};
  if (file) {
    const text = await readFile(file, 'utf8');
    try {
      raw = parseYaml(text) ?? {};
    } catch (err) {
      throw new Error(`${file}: not valid YAML: ${(err as Error).message}`, { cause: err });
    }
  }
  const result = configSchema.safeParse(raw);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    throw new Error(`${file}: ${issue.path.join('.') || '(top level)'}: ${issue.message}`);
  }
  return result.data;
}
