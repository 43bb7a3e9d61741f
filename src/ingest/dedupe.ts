/**
 * Remembers recent insertIds per organization so that a retried batch is not stored twice. The window is bounded
 * (oldest forgotten first), as Cloud Logging's own dedupe is: retries come within seconds, not days.
 */
export class InsertIdWindow {
  private readonly seen = new Map<string, Set<string>>();
  private readonly order: [string, string][] = [];
  private head = 0;

  constructor(private readonly capacity: number) {}

  has(org: string, insertId: string): boolean {
    return this.seen.get(org)?.has(insertId) ?? false;
  }

  add(org: string, insertId: string): void {
    let ids = this.seen.get(org);
    if (!ids) this.seen.set(org, (ids = new Set()));
    if (ids.has(insertId)) return;
    ids.add(insertId);
    this.order.push([org, insertId]);
    if (this.order.length - this.head > this.capacity) {
      const [oldOrg, oldId] = this.order[this.head++]!;
      this.seen.get(oldOrg)?.delete(oldId);
      // Compact now and then so the queue does not grow without bound.
      if (this.head > 65_536 && this.head * 2 > this.order.length) {
        this.order.splice(0, this.head);
        this.head = 0;
      }
    }
  }

  delete(org: string, insertId: string): void {
    this.seen.get(org)?.delete(insertId);
  }
}
