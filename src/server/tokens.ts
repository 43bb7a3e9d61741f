import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFile, rename, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';

export type Role = 'reader' | 'writer' | 'admin';
export const ROLES: readonly Role[] = ['reader', 'writer', 'admin'];

export interface TokenRecord {
  id: string;
  /** SHA-256 of the token; the token itself is shown once and never stored. */
  sha256: string;
  role: Role;
  /** The organization the token acts for; an admin token may name any organization per request. */
  organization: string;
  createdAt: string;
  description?: string;
}

export interface Principal {
  tokenId: string;
  role: Role;
  organization: string;
}

const PREFIX = 'cst_';

function digest(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

/** API tokens, persisted as hashes in `<data>/tokens.json` (mode 0600). */
export class TokenStore {
  private constructor(
    private readonly file: string,
    private records: TokenRecord[],
  ) {}

  static async open(dataDir: string): Promise<TokenStore> {
    await mkdir(dataDir, { recursive: true });
    const file = join(dataDir, 'tokens.json');
    let records: TokenRecord[] = [];
    try {
      records = JSON.parse(await readFile(file, 'utf8')) as TokenRecord[];
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`cannot read ${file}: ${(err as Error).message}`, { cause: err });
    }
    return new TokenStore(file, records);
  }

  get size(): number {
    return this.records.length;
  }

  list(organization?: string): Omit<TokenRecord, 'sha256'>[] {
    return this.records.filter((r) => !organization || r.organization === organization).map(({ sha256: _, ...rest }) => rest);
  }

  /** Creates a token; `secret` lets a script fix the value (`CUSTOS_ADMIN_TOKEN`). Returns the token text once. */
  async create(role: Role, organization: string, options: { secret?: string; description?: string } = {}): Promise<{ token: string; record: TokenRecord }> {
    const token = options.secret ?? PREFIX + randomBytes(24).toString('base64url');
    const record: TokenRecord = {
      id: randomBytes(6).toString('hex'),
      sha256: digest(token),
      role,
      organization,
      createdAt: new Date().toISOString(),
      ...(options.description ? { description: options.description } : {}),
    };
    if (!this.records.some((r) => r.sha256 === record.sha256)) {
      this.records.push(record);
      await this.save();
    }
    return { token, record };
  }

  async revoke(id: string): Promise<boolean> {
    const before = this.records.length;
    this.records = this.records.filter((r) => r.id !== id);
    if (this.records.length !== before) await this.save();
    return this.records.length !== before;
  }

  authenticate(token: string): Principal | undefined {
    const wanted = Buffer.from(digest(token), 'hex');
    for (const r of this.records) {
      if (timingSafeEqual(Buffer.from(r.sha256, 'hex'), wanted)) return { tokenId: r.id, role: r.role, organization: r.organization };
    }
    return undefined;
  }

  private async save(): Promise<void> {
    const tmp = `${this.file}.tmp`;
    await writeFile(tmp, JSON.stringify(this.records, null, 2), { mode: 0o600 });
    await rename(tmp, this.file);
  }
}

export function can(principal: Principal, needed: Role): boolean {
  return ROLES.indexOf(principal.role) >= ROLES.indexOf(needed);
}
