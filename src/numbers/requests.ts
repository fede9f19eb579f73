import type pg from "pg";
import type { ProviderClients } from "../providers/clients.ts";
import { accountById } from "../providers/routing.ts";
import type { TwilioClient } from "../providers/twilio.ts";
import {
  addProviderNumber,
  detailsOf,
  findIncomingNumber,
  heldNumber,
  heraldWebhooks,
  isRefusal,
  providerMessage,
  webhooksElsewhere,
  type HeldNumber,
} from "./verify.ts";

/**
 * Number work a tenant's owner or admin asked for (herald_public.number_requests),
 * carried out inside a worker job's tenant context under the account's
 * credentials: search, sync, import, buy, release, configure. The provider's answer
 * completes the request (`done` with `result`, or `failed` with `error`); a
 * provider refusal is final, anything else (429, 5xx, network) throws so the
 * job retries. A request already completed is left alone: the task may run
 * again (at-least-once) without doing the work twice.
 */

interface RequestRow {
  kind: "search" | "sync" | "import" | "buy" | "release" | "configure";
  provider_account_id: string;
  sender_number_id: string | null;
  params: Record<string, unknown>;
  status: string;
}

/** At most this many numbers are listed by a sync (one page of Twilio's largest). */
export const SYNC_LIMIT = 1000;
/** At most this many available numbers are returned by a search. */
export const SEARCH_LIMIT = 20;

const listed = (clients: ProviderClients, n: HeldNumber) => ({
  sid: n.sid,
  phoneNumber: n.phoneNumber,
  friendlyName: n.friendlyName,
  capabilities: n.capabilities,
  smsUrl: n.smsUrl,
  statusCallback: n.statusCallback,
  webhooksElsewhere: webhooksElsewhere(clients, n),
});

async function numberOf(client: pg.ClientBase, id: string | null) {
  const { rows } = await client.query<{ id: string; phone_number: string }>(
    "select id, phone_number from herald_public.sender_numbers where tenant_id = herald_public.current_tenant_id() and id = $1",
    [id],
  );
  return rows[0];
}

async function work(
  client: pg.ClientBase,
  clients: ProviderClients,
  twilio: TwilioClient,
  request: RequestRow,
  accountId: string,
): Promise<unknown> {
  const webhooks = heraldWebhooks(clients);
  switch (request.kind) {
    case "search": {
      const p = request.params as {
        country: string;
        area_code?: string;
        contains?: string;
        sms?: boolean;
        mms?: boolean;
        voice?: boolean;
      };
      const found = await twilio.availablePhoneNumbers(p.country).local.list({
        ...(p.area_code ? { areaCode: Number(p.area_code) } : {}),
        ...(p.contains ? { contains: p.contains } : {}),
        ...(p.sms ? { smsEnabled: true } : {}),
        ...(p.mms ? { mmsEnabled: true } : {}),
        ...(p.voice ? { voiceEnabled: true } : {}),
        limit: SEARCH_LIMIT,
      });
      return {
        numbers: found.map((n) => ({
          phoneNumber: n.phoneNumber,
          friendlyName: n.friendlyName,
          locality: n.locality,
          region: n.region,
          capabilities: n.capabilities,
        })),
      };
    }
    case "sync": {
      const found = await twilio.incomingPhoneNumbers.list({ limit: SYNC_LIMIT });
      return { numbers: found.map((n) => listed(clients, heldNumber(n))) };
    }
    case "import": {
      const wanted = new Set(request.params.phone_numbers as string[]);
      // Listed again now, under the account's credentials: only what the provider names is added.
      const listedNow = (await twilio.incomingPhoneNumbers.list({ limit: SYNC_LIMIT })).map(heldNumber);
      const added = [];
      for (const held of listedNow.filter((n) => wanted.has(n.phoneNumber))) {
        added.push({ phoneNumber: held.phoneNumber, ...(await addProviderNumber(client, clients, accountId, held)) });
      }
      const found = new Set(added.map((a) => a.phoneNumber));
      return {
        senderNumberIds: added.map((a) => a.id),
        numbers: added,
        notListed: [...wanted].filter((n) => !found.has(n)),
      };
    }
    case "buy": {
      const phoneNumber = String(request.params.phone_number);
      // A retried job must not buy again: a number the account already holds is the purchase.
      let held = await findIncomingNumber(twilio, phoneNumber);
      if (!held) {
        held = heldNumber(
          await twilio.incomingPhoneNumbers.create({
            phoneNumber,
            ...(webhooks
              ? { smsUrl: webhooks.smsUrl, smsMethod: "POST", statusCallback: webhooks.statusCallback }
              : {}),
          }),
        );
      }
      const added = await addProviderNumber(client, clients, accountId, held);
      return { senderNumberId: added.id, status: added.status, phoneNumber, sid: held.sid };
    }
    case "release": {
      const number = await numberOf(client, request.sender_number_id);
      if (!number) return { released: false, reason: "the number was removed already" };
      const held = await findIncomingNumber(twilio, number.phone_number);
      if (held) await twilio.incomingPhoneNumbers(held.sid).remove();
      await client.query(
        "delete from herald_public.sender_numbers where tenant_id = herald_public.current_tenant_id() and id = $1",
        [number.id],
      );
      return { released: true, phoneNumber: number.phone_number };
    }
    case "configure": {
      if (!webhooks) throw new Refusal("HERALD_PUBLIC_URL is not set: Herald does not know its public address");
      const number = await numberOf(client, request.sender_number_id);
      if (!number) throw new Refusal("the number was removed");
      const held = await findIncomingNumber(twilio, number.phone_number);
      if (!held) throw new Refusal("the provider does not list this number among the account's phone numbers");
      const updated = heldNumber(
        await twilio.incomingPhoneNumbers(held.sid).update({
          smsUrl: webhooks.smsUrl,
          smsMethod: "POST",
          statusCallback: webhooks.statusCallback,
          statusCallbackMethod: "POST",
        }),
      );
      await client.query(
        `insert into herald_hidden.sender_number_checks (action, sender_number_id, owned, details)
         values ('check', $1, true, $2)`,
        [number.id, JSON.stringify(detailsOf(clients, updated))],
      );
      return { smsUrl: updated.smsUrl, statusCallback: updated.statusCallback };
    }
  }
}

/** A final answer: the request fails with this text. */
class Refusal extends Error {}

export async function runNumberRequest(
  client: pg.ClientBase,
  clients: ProviderClients,
  requestId: string,
): Promise<void> {
  const { rows } = await client.query<RequestRow>(
    `select kind, provider_account_id, sender_number_id, params, status from herald_public.number_requests
      where tenant_id = herald_public.current_tenant_id() and id = $1 for update`,
    [requestId],
  );
  const request = rows[0];
  if (!request || request.status !== "queued") return;
  const complete = (status: "done" | "failed", result: unknown, error: string | null) =>
    client.query(
      `update herald_public.number_requests set status = $2, result = $3, error = $4, completed_at = now()
        where tenant_id = herald_public.current_tenant_id() and id = $1`,
      [requestId, status, result === null ? null : JSON.stringify(result), error],
    );
  const account = await accountById(client, request.provider_account_id);
  if (!account || account.kind !== "twilio") {
    await complete("failed", null, "the request's account is not a Twilio account");
    return;
  }
  try {
    const result = await work(client, clients, clients.twilioFor(account), request, account.id);
    await complete("done", result, null);
  } catch (error) {
    if (error instanceof Refusal || isRefusal(error)) await complete("failed", null, providerMessage(error));
    else throw error;
  }
}
