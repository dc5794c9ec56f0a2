/**
 * Which addresses a webhook may connect to. The check runs on the address actually dialled:
 * literal IPs as they are, host names on every address DNS returns for them, at connect
 * time (so a name that re-resolves to another address, DNS rebinding, is checked again).
 */
import { lookup as dnsLookup, type LookupAddress, type LookupOptions } from "node:dns";
import { BlockList, isIP } from "node:net";
import { AddressRefusedError } from "../errors.js";

/** Options of an {@link AddressPolicy}. */
export interface AddressPolicyOptions {
  /**
   * Allow loopback and private addresses (127/8, ::1, 10/8, 172.16/12, 192.168/16,
   * 100.64/10, fc00::/7, 0.0.0.0/8, ::); default true: internal services are a main use.
   * Set false where people you do not trust write subscriptions.
   */
  allowPrivateNetworks?: boolean;
}

type Family = "ipv4" | "ipv6";
type Range = [address: string, prefix: number, family: Family];

/** Well-known NAT64 prefix: 64:ff9b::a.b.c.d reaches the IPv4 address a.b.c.d. */
function withNat64(ranges: Range[]): Range[] {
  return ranges.flatMap((range): Range[] => {
    if (range[2] !== "ipv4") return [range];
    const [a, b, c, d] = range[0].split(".").map(Number) as [number, number, number, number];
    const hex = (hi: number, lo: number) => ((hi << 8) | lo).toString(16);
    return [range, [`64:ff9b::${hex(a, b)}:${hex(c, d)}`, 96 + range[1], "ipv6"]];
  });
}

/** Never a webhook target: link-local (where cloud metadata services live) and non-unicast. */
const ALWAYS_REFUSED: Array<[label: string, ranges: Range[]]> = [
  ["a cloud metadata address", withNat64([["169.254.169.254", 32, "ipv4"], ["100.100.100.200", 32, "ipv4"]]).concat([["fd00:ec2::254", 128, "ipv6"]])],
  ["a link-local address", withNat64([["169.254.0.0", 16, "ipv4"]]).concat([["fe80::", 10, "ipv6"]])],
  ["not a unicast address", withNat64([["224.0.0.0", 4, "ipv4"], ["240.0.0.0", 4, "ipv4"]]).concat([["ff00::", 8, "ipv6"]])],
];

/** Refused only when private networks are not allowed. */
const PRIVATE: Array<[label: string, ranges: Range[]]> = [
  ["a loopback address", withNat64([["127.0.0.0", 8, "ipv4"], ["0.0.0.0", 8, "ipv4"]]).concat([["::1", 128, "ipv6"], ["::", 128, "ipv6"]])],
  [
    "a private address",
    withNat64([["10.0.0.0", 8, "ipv4"], ["172.16.0.0", 12, "ipv4"], ["192.168.0.0", 16, "ipv4"], ["100.64.0.0", 10, "ipv4"]]).concat([
      ["fc00::", 7, "ipv6"],
    ]),
  ],
];

function blockList(ranges: Range[]): BlockList {
  const list = new BlockList();
  for (const [address, prefix, family] of ranges) list.addSubnet(address, prefix, family);
  return list;
}

const compile = (classes: Array<[string, Range[]]>) => classes.map(([label, ranges]) => [label, blockList(ranges)] as const);
const alwaysRefused = compile(ALWAYS_REFUSED);
const privateRanges = compile(PRIVATE);

/** A `dns.lookup`-compatible function. */
export type LookupFunction = (
  hostname: string,
  options: LookupOptions,
  callback: (error: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void,
) => void;

/** Decides whether a webhook may connect to an address; see {@link AddressPolicyOptions}. */
export class AddressPolicy {
  /** Whether loopback and private ranges are allowed. */
  readonly allowPrivateNetworks: boolean;

  constructor(options: AddressPolicyOptions = {}) {
    this.allowPrivateNetworks = options.allowPrivateNetworks ?? true;
  }

  /** Why `address` (an IP literal) is refused, or undefined when it is allowed. */
  refusal(address: string): string | undefined {
    const version = isIP(address);
    if (version === 0) return "not an IP address";
    const family: Family = version === 4 ? "ipv4" : "ipv6";
    for (const [label, list] of alwaysRefused) {
      if (list.check(address, family)) return `${label}, which webhooks may never reach`;
    }
    if (!this.allowPrivateNetworks) {
      for (const [label, list] of privateRanges) {
        if (list.check(address, family)) return `${label}, refused because this worker does not allow private networks (webhooks.allowPrivateNetworks is false)`;
      }
    }
    return undefined;
  }

  /** Throws {@link AddressRefusedError} when the URL's host is an IP literal the policy refuses. */
  checkLiteral(hostname: string): void {
    const bare = hostname.startsWith("[") ? hostname.slice(1, -1) : hostname;
    if (isIP(bare) === 0) return;
    const why = this.refusal(bare);
    if (why) throw new AddressRefusedError(`${bare} is ${why}`);
  }

  /**
   * A `dns.lookup` replacement for the connection: resolves as usual, then refuses the host
   * when any address it resolves to is refused (one bad answer is enough to suspect
   * rebinding, and connecting to the others instead would make the outcome depend on luck).
   */
  readonly lookup: LookupFunction = (hostname, options, callback) => {
    dnsLookup(hostname, { ...options, all: true }, (error, addresses) => {
      if (error) return callback(error, []);
      for (const { address } of addresses) {
        const why = this.refusal(address);
        if (why) return callback(new AddressRefusedError(`${hostname} resolves to ${address}, ${why}`), []);
      }
      if (options.all) return callback(null, addresses);
      const first = addresses[0];
      if (!first) return callback(Object.assign(new Error(`${hostname} has no address`), { code: "ENOTFOUND" }), []);
      callback(null, first.address, first.family);
    });
  };
}
