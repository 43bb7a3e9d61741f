/**
 * Per-node token bucket on flow time (seed 002: "a node can log up to 500 connections per second before it starts
 * dropping logs"). Capacity equals the rate, so there is no burst above it; measuring on the flows' own clock makes a
 * replay deterministic. A rate of 0 turns the limit off.
 */
export class NodeRateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  constructor(private readonly perSecond: number) {}

  /** Takes a token for `node` at flow time `t` (seconds); false when the record must be dropped. */
  take(node: string, t: number): boolean {
    if (this.perSecond <= 0) return true;
    let bucket = this.buckets.get(node);
    if (!bucket) {
      bucket = { tokens: this.perSecond, at: t };
      this.buckets.set(node, bucket);
    } else if (t > bucket.at) {
      bucket.tokens = Math.min(this.perSecond, bucket.tokens + (t - bucket.at) * this.perSecond);
      bucket.at = t;
    }
    if (bucket.tokens < 1) return false;
    bucket.tokens -= 1;
    return true;
  }
}
