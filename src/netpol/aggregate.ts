/**
 * Deny aggregation (seed 002, "Log aggregation for denied connections"): denies with the same src_ip, dest_ip,
 * dest_port, protocol and direction within the window of the first one become one record carrying the first deny's
 * timestamp and src_port and a `count`. The number of open keys is bounded; a deny that would open one more is
 * dropped and reported.
 */
/** Two-part key: a group (the enforced side) and a key within it, numbers for IPv4 so no string is built per deny. */
export type WindowKey = number | string;

export interface OpenWindow<R> {
  group: WindowKey;
  key: WindowKey;
  record: R;
  opened: number;
  count: number;
  closed: boolean;
}

export class DenyAggregator<R> {
  private readonly groups = new Map<WindowKey, Map<WindowKey, OpenWindow<R>>>();
  private openCount = 0;
  // Windows in opening order: the ones to close are at the head. Closed entries are skipped and compacted away.
  private queue: OpenWindow<R>[] = [];
  private head = 0;

  constructor(
    private readonly windowSeconds: number,
    private readonly maxKeys: number,
    private readonly onClosed: (window: OpenWindow<R>) => void,
  ) {}

  get size(): number {
    return this.openCount;
  }

  /**
   * Counts a deny into the open window of its key (`merged`), or says a window must be opened (`new`, then call
   * `open`) or cannot be (`overflow`: the key bound is reached). A window of the key that ended is closed first.
   */
  merge(group: WindowKey, key: WindowKey, t: number): 'merged' | 'new' | 'overflow' {
    const window = this.groups.get(group)?.get(key);
    if (window) {
      if (t < window.opened + this.windowSeconds) {
        window.count++;
        return 'merged';
      }
      this.closeWindow(window);
    }
    return this.openCount >= this.maxKeys ? 'overflow' : 'new';
  }

  open(group: WindowKey, key: WindowKey, t: number, record: R): void {
    const window = { group, key, record, opened: t, count: 1, closed: false };
    let windows = this.groups.get(group);
    if (!windows) this.groups.set(group, (windows = new Map()));
    windows.set(key, window);
    this.openCount++;
    this.queue.push(window);
  }

  /** Closes the windows that ended by `now` (all of them when `now` is Infinity), oldest first. */
  close(now: number): void {
    const queue = this.queue;
    while (this.head < queue.length) {
      const window = queue[this.head]!;
      if (!window.closed) {
        if (window.opened + this.windowSeconds > now) break;
        this.closeWindow(window);
      }
      this.head++;
    }
    if (this.head > 4096 && this.head * 2 > queue.length) {
      this.queue = queue.slice(this.head);
      this.head = 0;
    }
  }

  private closeWindow(window: OpenWindow<R>): void {
    window.closed = true;
    const windows = this.groups.get(window.group)!;
    windows.delete(window.key);
    if (windows.size === 0) this.groups.delete(window.group);
    this.openCount--;
    this.onClosed(window);
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
