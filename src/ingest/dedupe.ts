/**
 * Remembers recent insertIds per organization so that a retried batch is not stored twice. The window is bounded
 * (oldest forgotten first), as Cloud Logging's own dedupe is: retries come within seconds, not days.
 */
export class InsertIdWindow {
  private readonly seen = new Map<string, Set<string>>();
  // The remembered ids in the order they came, as a ring once full: two flat arrays and no object per id, since every
  // id stays long enough to be promoted by the garbage collector.
  private readonly orgs: string[] = [];
  private readonly ids: string[] = [];
  /** Where the next id goes once the ring is full: the slot of the oldest one. */
  private oldest = 0;

  constructor(private readonly capacity: number) {}

  has(org: string, insertId: string): boolean {
    return this.seen.get(org)?.has(insertId) ?? false;
  }

  add(org: string, insertId: string): void {
    let ids = this.seen.get(org);
    if (!ids) this.seen.set(org, (ids = new Set()));
    if (ids.has(insertId)) return;
    ids.add(insertId);
    if (this.ids.length < this.capacity) {
      this.orgs.push(org);
      this.ids.push(insertId);
      return;
    }
    this.seen.get(this.orgs[this.oldest]!)?.delete(this.ids[this.oldest]!);
    this.orgs[this.oldest] = org;
    this.ids[this.oldest] = insertId;
    this.oldest = (this.oldest + 1) % this.capacity;
  }

  delete(org: string, insertId: string): void {
    this.seen.get(org)?.delete(insertId);
  }
}
