import dns from "node:dns";
import http from "node:http";
import https from "node:https";
import net from "node:net";

/**
 * One POST to a tenant's endpoint. The URL is the tenant's to choose, so in
 * production it may not reach Herald's own network: it must be https, and
 * every address its name resolves to — checked as the connection is made, so
 * a name that changes its answer between check and use (DNS rebinding) gains
 * nothing — must be public. Development and tests post to localhost freely.
 */

export interface PostPolicy {
  /** Loopback, private, link-local addresses and plain http allowed (development, tests). */
  allowPrivateNetworks: boolean;
  /** The whole exchange, connection to the answer's last byte: an endpoint that drips bytes is cut off too. */
  timeoutMs: number;
}

/** Bytes of an answer read before the connection is closed: the body is not used. */
const MAX_ANSWER_BYTES = 64 * 1024;

export type PostResult =
  | { kind: "answered"; status: number }
  | { kind: "failed"; error: string }
  /** Refused by the policy before anything was sent: trying again cannot help. */
  | { kind: "refused"; error: string };

const NOT_PUBLIC = new net.BlockList();
for (const [network, prefix] of [
  ["0.0.0.0", 8],
  ["10.0.0.0", 8],
  ["100.64.0.0", 10],
  ["127.0.0.0", 8],
  ["169.254.0.0", 16],
  ["172.16.0.0", 12],
  ["192.0.0.0", 24],
  ["192.88.99.0", 24],
  ["192.168.0.0", 16],
  ["198.18.0.0", 15],
  ["224.0.0.0", 4],
  ["240.0.0.0", 4],
] as const)
  NOT_PUBLIC.addSubnet(network, prefix, "ipv4");
// Unspecified, loopback and the deprecated IPv4-compatible range (::/96),
// IPv4-translated (::ffff:0:0:0/96), unique-local, link-local, site-local,
// multicast, documentation, and NAT64 (whose embedded IPv4 address may be
// anything, the cloud's metadata address included).
for (const [network, prefix] of [
  ["::", 96],
  ["::ffff:0:0:0", 96],
  ["fc00::", 7],
  ["fe80::", 10],
  ["fec0::", 10],
  ["ff00::", 8],
  ["2001:db8::", 32],
  ["64:ff9b::", 96],
  ["64:ff9b:1::", 48],
  ["100::", 64],
] as const)
  NOT_PUBLIC.addSubnet(network, prefix, "ipv6");

/** Two hex groups of an IPv6 address as the IPv4 address they carry. */
function dottedQuad(highGroup: string, lowGroup: string): string {
  const [high, low] = [parseInt(highGroup, 16), parseInt(lowGroup, 16)];
  return `${high >> 8}.${high & 255}.${low >> 8}.${low & 255}`;
}

export function isPublicAddress(address: string): boolean {
  // IPv4-mapped (::ffff:a.b.c.d, or in hex ::ffff:AABB:CCDD): the IPv4 address decides.
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)?.[1];
  if (mapped) return isPublicAddress(mapped);
  const mappedHex = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/i.exec(address);
  if (mappedHex) return isPublicAddress(dottedQuad(mappedHex[1]!, mappedHex[2]!));
  // 6to4 (2002:AABB:CCDD::/48) carries an IPv4 address: it must be public too.
  const sixToFour = /^2002:([0-9a-f]{1,4}):([0-9a-f]{1,4}):/i.exec(address);
  if (sixToFour && !isPublicAddress(dottedQuad(sixToFour[1]!, sixToFour[2]!))) return false;
  return !NOT_PUBLIC.check(address, net.isIPv6(address) ? "ipv6" : "ipv4");
}

class RefusedAddress extends Error {}

/** dns.lookup, refusing names that resolve to anything but public addresses. */
const publicOnlyLookup: net.LookupFunction = (hostname, options, callback) => {
  dns.lookup(hostname, { ...options, all: true }, (error, addresses) => {
    if (error) return callback(error, "", 0);
    const list = addresses as dns.LookupAddress[];
    const refused = list.find((a) => !isPublicAddress(a.address));
    if (refused || list.length === 0)
      return callback(new RefusedAddress(`${hostname} resolves to a non-public address`), "", 0);
    if ((options as dns.LookupOptions).all)
      return (callback as unknown as (e: null, a: dns.LookupAddress[]) => void)(null, list);
    callback(null, list[0]!.address, list[0]!.family);
  });
};

export function postJson(
  url: string,
  body: string,
  headers: Record<string, string>,
  policy: PostPolicy,
): Promise<PostResult> {
  let target: URL;
  try {
    target = new URL(url);
  } catch {
    return Promise.resolve({ kind: "refused", error: "not a URL" });
  }
  if (!policy.allowPrivateNetworks) {
    if (target.protocol !== "https:") return Promise.resolve({ kind: "refused", error: "endpoints must use https" });
    if (
      net.isIP(target.hostname.replace(/^\[|\]$/g, "")) &&
      !isPublicAddress(target.hostname.replace(/^\[|\]$/g, ""))
    ) {
      return Promise.resolve({ kind: "refused", error: "the endpoint's address is not public" });
    }
  }
  const client = target.protocol === "https:" ? https : http;
  return new Promise((resolve) => {
    let settled = false;
    const settle = (result: PostResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(deadline);
      resolve(result);
    };
    const request = client.request(
      target,
      {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "content-length": Buffer.byteLength(body),
          "user-agent": "Herald-Webhooks/1",
          ...headers,
        },
        ...(policy.allowPrivateNetworks ? {} : { lookup: publicOnlyLookup }),
      },
      (response) => {
        // The answer's body is the endpoint's business: read (up to a limit) and dropped.
        let bytes = 0;
        response.on("data", (chunk: Buffer) => {
          bytes += chunk.length;
          if (bytes > MAX_ANSWER_BYTES) {
            settle({ kind: "answered", status: response.statusCode ?? 0 });
            request.destroy();
          }
        });
        response.on("end", () => settle({ kind: "answered", status: response.statusCode ?? 0 }));
        response.on("error", (error) => settle({ kind: "failed", error: error.message }));
      },
    );
    // One deadline for everything, however slowly the bytes come: a slow endpoint is a failed one.
    const deadline = setTimeout(() => {
      settle({ kind: "failed", error: `no complete answer within ${policy.timeoutMs} ms` });
      request.destroy();
    }, policy.timeoutMs);
    request.on("error", (error) =>
      settle(
        error instanceof RefusedAddress
          ? { kind: "refused", error: error.message }
          : { kind: "failed", error: error.message.slice(0, 300) },
      ),
    );
    request.end(body);
  });
}
