import type { ProviderClients, TenantAccount } from "../providers/clients.ts";
import type { Sent } from "../providers/transmit.ts";
import { sha256 } from "./claim.ts";

/**
 * Whether Twilio accepted a message whose send ended in doubt (a timeout, a
 * 5xx, a worker that died mid-call): the recent messages to the recipient, on
 * the tenant's active account and on the system's, are searched for the body
 * claimed (by its SHA-256, as rendered then) since the claim. Twilio lists a
 * message as soon as it accepts it, so absence means it was not accepted.
 * Provider errors propagate: no answer, no decision. No database connection
 * is needed: the account (with its credential) was read with the claim.
 */
export async function findAcceptedSmsVia(
  clients: ProviderClients,
  account: TenantAccount | null,
  message: { to: string; bodySha256: string; channel: "sms" | "whatsapp"; since: Date },
  around: <T>(accountKey: string, call: () => Promise<T>) => Promise<T> = (_key, call) => call(),
): Promise<{ sent: Sent; body: string } | undefined> {
  const address = message.channel === "whatsapp" ? `whatsapp:${message.to}` : message.to;
  const routes = account ? [account, "system" as const] : ["system" as const];
  for (const via of routes) {
    const recent = await around(via === "system" ? "system" : via.id, () =>
      clients.twilioFor(via).messages.list({ to: address, limit: 50 }),
    );
    const match = recent.find((m) => sha256(m.body) === message.bodySha256 && m.dateCreated >= message.since);
    if (match) {
      return {
        body: match.body,
        sent: {
          provider: via === "system" ? "system" : "tenant",
          accountId: via === "system" ? undefined : via.id,
          providerMessageId: match.sid,
          from: match.from.replace(/^whatsapp:/, ""),
        },
      };
    }
  }
  return undefined;
}
