/**
 * Deny aggregation (seed 002, "Log aggregation for denied connections"): denies with the same src_ip, dest_ip,
 * dest_port, protocol and direction within the window of the first one become one record carrying the first deny's
 * timestamp and src_port and a `count`. The number of open keys is bounded; a deny that would open one more is
 * dropped and reported.
 */
export interface OpenWindow<R> {
  record: R;
  opened: number;
  count: number;
}

export type DenyOutcome = 'opened' | 'merged' | 'overflow';

export class DenyAggregator<R> {
  // Insertion order is opening order, so expired windows are always at the front.
  private readonly open = new Map<string, OpenWindow<R>>();

  constructor(
    private readonly windowSeconds: number,
    private readonly maxKeys: number,
  ) {}

  get size(): number {
    return this.open.size;
  }

  add(key: string, t: number, makeRecord: () => R): DenyOutcome {
    const window = this.open.get(key);
    if (window && t < window.opened + this.windowSeconds) {
      window.count++;
      return 'merged';
    }
    if (window) this.open.delete(key);
    if (this.open.size >= this.maxKeys) return 'overflow';
    this.open.set(key, { record: makeRecord(), opened: t, count: 1 });
    return 'opened';
  }

  /** Closes the windows that ended by `now` (all of them when `now` is Infinity), oldest first. */
  *close(now: number): Generator<OpenWindow<R>> {
    for (const [key, window] of this.open) {
      if (window.opened + this.windowSeconds > now) break;
      this.open.delete(key);
      yield window;
    }
  }
}

/**
 * UDP and ICMP have no connections, so packets of one 5-tuple are grouped into one while they keep coming within the
 * timeout (60 s by default, like a conntrack entry), as seed 002's "Definition of connection" describes.
 */
export class DatagramTracker {
  private readonly lastSeen = new Map<string, number>();
  private lastSweep = -Infinity;

  constructor(
    private readonly timeoutSeconds: number,
    private readonly maxEntries = 1_000_000,
  ) {}

  /** True when this packet starts a new connection; false when it belongs to one already seen. */
  isNewConnection(key: string, t: number): boolean {
    if (t - this.lastSweep >= this.timeoutSeconds) this.sweep(t);
    const seen = this.lastSeen.get(key);
    if (seen !== undefined && Math.abs(t - seen) < this.timeoutSeconds) {
      if (t > seen) this.lastSeen.set(key, t);
      return false;
    }
    if (seen !== undefined || this.lastSeen.size < this.maxEntries) this.lastSeen.set(key, t);
    return true;
  }

  private sweep(t: number): void {
    this.lastSweep = t;
    for (const [key, seen] of this.lastSeen) if (t - seen >= this.timeoutSeconds) this.lastSeen.delete(key);
  }
}
