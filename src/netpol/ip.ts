import ipaddr from 'ipaddr.js';

/**
 * IP addresses and CIDRs for ipBlock matching. IPv4 is matched on 32-bit integers (the hot path); IPv6 through
 * ipaddr.js. An IPv4 address never matches an IPv6 block and vice versa, even IPv4-mapped ones, as in Kubernetes.
 */
export interface Cidr {
  text: string;
  v6: boolean;
  /** IPv4 only: network and mask as unsigned 32-bit integers. */
  network: number;
  mask: number;
  /** IPv6 only. */
  range?: [ipaddr.IPv6, number];
  bits: number;
}

/** Unsigned 32-bit form of a dotted IPv4 address (no leading zeros), or -1 when it is not one. Hot: no regex. */
export function ipv4ToInt(text: string): number {
  const length = text.length;
  if (length < 7 || length > 15) return -1;
  let value = 0;
  let octet = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < length; i++) {
    const c = text.charCodeAt(i);
    if (c === 46) {
      if (digits === 0 || ++dots > 3) return -1;
      value = value * 256 + octet;
      octet = 0;
      digits = 0;
    } else if (c >= 48 && c <= 57) {
      if (digits > 0 && octet === 0) return -1; // a leading zero
      octet = octet * 10 + (c - 48);
      if (octet > 255) return -1;
      digits++;
    } else return -1;
  }
  if (dots !== 3 || digits === 0) return -1;
  return value * 256 + octet;
}

/** The canonical text of an IP address (RFC 5952 for IPv6), or undefined when it is not an address. */
export function normalizeIp(text: string): string | undefined {
  if (ipv4ToInt(text) >= 0) return text;
  if (!text.includes(':') || !ipaddr.IPv6.isValid(text)) return undefined;
  return ipaddr.IPv6.parse(text).toRFC5952String();
}

export function isIpv6(ip: string): boolean {
  return ip.includes(':');
}

/** Parses `a.b.c.d/n` or `v6/n`; undefined when invalid. */
export function parseCidr(text: string): Cidr | undefined {
  const slash = text.indexOf('/');
  if (slash < 0) return undefined;
  const address = text.slice(0, slash);
  const bitsText = text.slice(slash + 1);
  if (!/^\d{1,3}$/.test(bitsText)) return undefined;
  const bits = Number(bitsText);
  const v4 = ipv4ToInt(address);
  if (v4 >= 0) {
    if (bits > 32) return undefined;
    const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
    return { text, v6: false, network: (v4 & mask) >>> 0, mask, bits };
  }
  if (!address.includes(':') || !ipaddr.IPv6.isValid(address) || bits > 128) return undefined;
  return { text, v6: true, network: 0, mask: 0, range: [ipaddr.IPv6.parse(address), bits], bits };
}

export function cidrContains(cidr: Cidr, ip: string, ipv4Int: number): boolean {
  if (!cidr.v6) return ipv4Int >= 0 && ((ipv4Int & cidr.mask) >>> 0) === cidr.network;
  if (ipv4Int >= 0 || !isIpv6(ip)) return false;
  return ipaddr.IPv6.parse(ip).match(cidr.range!);
}

/** Whether `inner` lies inside `outer` and is strictly smaller (the API server's rule for `except`). */
export function cidrStrictlyInside(inner: Cidr, outer: Cidr): boolean {
  if (inner.v6 !== outer.v6 || inner.bits <= outer.bits) return false;
  if (!inner.v6) return ((inner.network & outer.mask) >>> 0) === outer.network;
  return inner.range![0].match(outer.range!);
}

/** `10.4.0.0/24` → `10.4.0.1`: the gateway address Dataplane V2 gives a node inside its pod CIDR (`cilium_host`). */
export function firstHostOf(cidr: Cidr): string | undefined {
  if (cidr.v6) {
    const bytes = cidr.range![0].toByteArray();
    bytes[15] = (bytes[15] ?? 0) | 1;
    return ipaddr.fromByteArray(bytes).toString();
  }
  if (cidr.bits >= 31) return undefined;
  const n = cidr.network + 1;
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/**
 * IPv4 address → value, open addressing over typed arrays: the per-flow lookup of both ends costs no string hashing
 * and no allocation. Built once per cluster load.
 */
export class Ipv4Table<V> {
  private readonly keys: Float64Array;
  private readonly slots: Int32Array;
  private readonly values: V[] = [];
  private readonly mask: number;

  constructor(expected: number) {
    let capacity = 16;
    while (capacity < expected * 2) capacity *= 2;
    this.keys = new Float64Array(capacity);
    this.slots = new Int32Array(capacity).fill(-1);
    this.mask = capacity - 1;
  }

  private slotOf(ip: number): number {
    let i = Math.imul(ip | 0, 0x9e3779b1) >>> 0 & this.mask;
    while (this.slots[i] !== -1 && this.keys[i] !== ip) i = (i + 1) & this.mask;
    return i;
  }

  set(ip: number, value: V): void {
    const i = this.slotOf(ip);
    if (this.slots[i] === -1) {
      if (this.values.length * 2 >= this.mask) throw new Error('Ipv4Table is full');
      this.keys[i] = ip;
      this.slots[i] = this.values.length;
      this.values.push(value);
    } else this.values[this.slots[i]!] = value;
  }

  get(ip: number): V | undefined {
    const slot = this.slots[this.slotOf(ip)]!;
    return slot === -1 ? undefined : this.values[slot];
  }
}
