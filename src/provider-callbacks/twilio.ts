import { timingSafeEqual } from "node:crypto";
import express, { type Request, type Response, type Router } from "express";
import twilio from "twilio";
import { z } from "zod";
import { KeyError } from "../crypto/keyring.ts";
import type { Logger } from "../logger.ts";
import { CARRIER_OPT_OUT } from "../messages/carrier-opt-out.ts";
import { InboundBatches } from "./inbound-batches.ts";
import { inboundMedia, storeInboundMedia } from "./media.ts";
import { classifyKeyword } from "./keywords.ts";
import { refuse } from "../api/responses.ts";
import type { ProviderReports } from "./reports.ts";
import { retriable } from "./unavailable.ts";
import { accountCredential, inTenantWithoutKeys, TtlCache, verifiedWith, type WebhookContext } from "./tenant.ts";

/**
 * Twilio's webhooks: inbound SMS/WhatsApp (`POST /webhooks/twilio/sms`) and
 * status callbacks (`POST /webhooks/twilio/status?tenant=…&delivery=…`, the
 * URL Herald gives each send).
 *
 * Neither carries a JWT. The tenant comes from what Twilio signed: the
 * receiving number (`To`, through the global sender_numbers mapping), or the
 * tenant and delivery in the callback URL (the signature covers the whole
 * URL). The signature (X-Twilio-Signature, HMAC-SHA1 over the URL and the
 * sorted POST parameters) is checked with the auth token of the account that
 * owns the number or sent the message — the tenant's own, or the system's —
 * against HERALD_PUBLIC_URL, so it holds behind a TLS-terminating proxy, and
 * a request signed for another host fails. Only a verified request touches
 * tenant rows; a missing or wrong signature is 403 with nothing written.
 */

export interface TwilioWebhookOptions extends WebhookContext {
  /** HERALD_PUBLIC_URL: the URL Twilio calls, which it signs. */
  publicUrl: string;
  /** The system account (TWILIO_*, or the sandbox's in development); absent: its numbers' webhooks cannot be verified. */
  system?: { accountSid: string; authToken: string };
  logger: Logger;
  /** The journal status callbacks are acknowledged into. */
  reports: ProviderReports;
}

interface NumberOwner {
  tenantId: string;
  senderNumberId: string;
  /** Null: the number is on the system account. */
  providerAccountId: string | null;
}

const E164 = /^\+[1-9]\d{6,14}$/;

/** `whatsapp:+1…` or `+1…` → the channel and the E.164 number. */
function parseAddress(raw: string | undefined): { channel: "sms" | "whatsapp"; number: string } | undefined {
  if (!raw) return undefined;
  const whatsapp = raw.startsWith("whatsapp:");
  const number = whatsapp ? raw.slice("whatsapp:".length) : raw;
  return E164.test(number) ? { channel: whatsapp ? "whatsapp" : "sms", number } : undefined;
}

/** Twilio's MessageStatus → what it makes of the delivery (null: nothing; recorded only). */
const STATUS_EFFECT: Record<string, string | null> = {
  accepted: "sent",
  queued: "sent",
  sending: "sent",
  sent: "sent",
  delivered: "delivered",
  read: "delivered",
  undelivered: "undelivered",
  failed: "failed",
};

const statusQuery = z.object({ tenant: z.uuid(), delivery: z.uuid().optional() });

/** Twilio's ids: a message (SM…, or MM… with media) and an account, 32 hex digits each. */
const MESSAGE_SID = /^(SM|MM)[0-9a-f]{32}$/;
const ACCOUNT_SID = /^AC[0-9a-f]{32}$/;

/**
 * The form as Twilio sends it: every parameter once. Twilio's signature joins
 * names and values with nothing between them and its SDK drops repeated
 * values before checking, so a signed request can be reshaped (a parameter
 * moved into its neighbour's value, one repeated) and still verify: ids must
 * have their exact shape, and no parameter may come twice.
 */
function twilioForm(body: unknown): Record<string, string> | undefined {
  if (typeof body !== "object" || body === null) return {};
  const params = body as Record<string, unknown>;
  return Object.values(params).every((v) => typeof v === "string") ? (params as Record<string, string>) : undefined;
}

/**
 * What Postgres text can hold: no NUL, no lone surrogate (either would fail
 * the transaction the message shares with others).
 */
const storableText = (text: string) => text.toWellFormed().replaceAll("\u0000", "");

/** The answer to most messages: nothing to say (built once). */
const EMPTY_TWIML = new twilio.twiml.MessagingResponse().toString();

function twiml(reply: string | null): string {
  if (!reply) return EMPTY_TWIML;
  const response = new twilio.twiml.MessagingResponse();
  response.message(reply);
  return response.toString();
}

/** Constant-time comparison of a received signature with the expected one. */
function signatureMatches(received: string, expected: string): boolean {
  const a = Buffer.from(received);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

export function twilioWebhooks(options: TwilioWebhookOptions): Router {
  const { logger, reports } = options;
  const ttl = options.keyring.cacheTtlMs;
  const owners = new TtlCache<NumberOwner | undefined>(ttl);
  const tokens = new TtlCache<string | undefined>(ttl);
  /** Which of a tenant's accounts an AccountSid is: every callback asks, several per message. */
  const accounts = new TtlCache<string | undefined>(ttl);
  const inbound = new InboundBatches(options);
  const router = express.Router();
  const form = express.urlencoded({ extended: false, limit: "64kb" });

  /** The auth token that signs webhooks for an account of the tenant (null: the system's). */
  const tokenOf = async (tenantId: string, accountId: string | null): Promise<string | undefined> => {
    if (accountId === null) return options.system?.authToken;
    const credential = await accountCredential(options, tenantId, accountId);
    if (credential?.apiKey) {
      // Twilio signs with the account's auth token; an API key's secret is not it.
      logger.warn(
        { tenant: tenantId, account: accountId },
        "cannot verify a Twilio webhook: the account authenticates with an API key, not its auth token",
      );
      return undefined;
    }
    return credential?.secret;
  };

  const verify = (req: Request, params: Record<string, string>, tenantId: string, accountId: string | null) => {
    const signature = req.get("x-twilio-signature")!;
    const url = options.publicUrl + req.originalUrl;
    return verifiedWith(
      tokens,
      `${tenantId}/${accountId ?? "system"}`,
      () => tokenOf(tenantId, accountId),
      (token) =>
        // The URL exactly as configured first (one HMAC); then the SDK's variants (with and without the port, escaped).
        signatureMatches(signature, twilio.getExpectedTwilioSignature(token, url, params)) ||
        twilio.validateRequest(token, signature, url, params),
    );
  };

  const lookUpOwner = async (address: { channel: string; number: string }): Promise<NumberOwner | undefined> => {
    const { rows } = await options.pool.query<{
      tenant_id: string;
      sender_number_id: string;
      provider_account_id: string | null;
    }>("select tenant_id, sender_number_id, provider_account_id from herald_private.inbound_number_owner($1, $2)", [
      address.number,
      address.channel,
    ]);
    const row = rows[0];
    return (
      row && {
        tenantId: row.tenant_id,
        senderNumberId: row.sender_number_id,
        providerAccountId: row.provider_account_id,
      }
    );
  };

  router.post(
    "/sms",
    form,
    retriable(async (req: Request, res: Response) => {
      if (!req.get("x-twilio-signature"))
        return refuse(res, 403, "MISSING_SIGNATURE", "X-Twilio-Signature is required.");
      const params = twilioForm(req.body);
      if (!params) return refuse(res, 400, "BAD_REQUEST", "A parameter was given more than once.");
      const to = parseAddress(params.To);
      if (!to || !MESSAGE_SID.test(params.MessageSid ?? "") || !params.From) {
        return refuse(res, 400, "BAD_REQUEST", "To (an E.164 number), From and MessageSid (SM… or MM…) are required.");
      }
      const ownerKey = `${to.channel}:${to.number}`;
      let owner = await owners.get(ownerKey, () => lookUpOwner(to));
      if (!owner) {
        // Not remembered: a number registered a moment from now must find its tenant.
        owners.forget(ownerKey);
        return refuse(res, 404, "UNKNOWN_NUMBER", "No tenant receives messages at this number.");
      }
      let verdict = await verify(req, params, owner.tenantId, owner.providerAccountId);
      if (verdict !== "verified") {
        // The number may have moved to another verified owner since it was cached (at most one reload a second).
        const fresh = await owners.get(ownerKey, () => lookUpOwner(to), { refresh: true });
        if (fresh && (fresh.tenantId !== owner.tenantId || fresh.providerAccountId !== owner.providerAccountId)) {
          owner = fresh;
          verdict = await verify(req, params, owner.tenantId, owner.providerAccountId);
        }
      }
      if (verdict !== "verified") {
        logger.warn({ tenant: owner.tenantId, verdict }, "refused an inbound webhook: signature not verified");
        return refuse(res, 403, "INVALID_SIGNATURE", "The request is not signed by the account that owns this number.");
      }

      // Verified: from here on, inside the tenant only.
      // Twilio gives the sender in E.164 already, the form contacts are hashed in; anything else (a short code) matches no one.
      const from = parseAddress(params.From);
      const keyword = classifyKeyword(params.Body ?? "");
      const result = await inbound.receive(owner.tenantId, {
        channel: to.channel,
        to_number: to.number,
        from_phone: from?.number ?? null,
        body: storableText(params.Body ?? ""),
        provider_message_id: params.MessageSid!,
        media_count: Math.min(Math.max(Number(params.NumMedia) || 0, 0), 10),
        keyword: keyword?.kind ?? null,
        keyword_word: keyword?.word ?? null,
      });
      if (result.error_code === "NTFND") {
        // The number changed hands since it was looked up: look again next time.
        owners.forget(ownerKey);
        return refuse(res, 404, "UNKNOWN_NUMBER", "No tenant receives messages at this number.");
      }
      if (result.error_code) throw new Error(`receiving an inbound message failed (SQLSTATE ${result.error_code})`);
      // Its media (MMS, WhatsApp), with the message: before Twilio's answer, so that a failure here makes Twilio retry.
      if (result.inbound_message_id)
        await storeInboundMedia(options, owner.tenantId, result.inbound_message_id, inboundMedia(params));
      // Every request is logged already (method, path, status); this says what it became.
      logger.debug(
        {
          tenant: owner.tenantId,
          inbound: result.inbound_message_id,
          keyword: result.keyword,
          duplicate: result.duplicate,
        },
        "inbound message",
      );
      res.type("text/xml").send(twiml(result.reply));
    }, logger),
  );

  router.post(
    "/status",
    form,
    retriable(async (req: Request, res: Response) => {
      if (!req.get("x-twilio-signature"))
        return refuse(res, 403, "MISSING_SIGNATURE", "X-Twilio-Signature is required.");
      const params = twilioForm(req.body);
      if (!params) return refuse(res, 400, "BAD_REQUEST", "A parameter was given more than once.");
      const query = statusQuery.safeParse(req.query);
      if (!query.success) return refuse(res, 404, "UNKNOWN_TENANT", "The callback URL names no tenant.");
      const { tenant: tenantId, delivery: deliveryId } = query.data;
      const { AccountSid: accountSid = "", MessageSid: messageSid = "", MessageStatus: status = "" } = params;
      if (!ACCOUNT_SID.test(accountSid) || !MESSAGE_SID.test(messageSid) || !/^[a-z_]{1,40}$/.test(status)) {
        return refuse(
          res,
          400,
          "BAD_REQUEST",
          "AccountSid (AC…), MessageSid (SM… or MM…) and MessageStatus are required.",
        );
      }

      // Which account sent it: the system's, or one of this tenant's (looked up
      // without the tenant's keys: nothing may be written before verification).
      let accountId: string | null = null;
      const accountKey = `${tenantId}/${accountSid}`;
      if (accountSid !== options.system?.accountSid) {
        const found = await accounts.get(accountKey, async () => {
          const { rows } = await inTenantWithoutKeys(options, tenantId, (client) =>
            client.query<{ id: string }>(
              `select id from herald_public.provider_accounts
              where tenant_id = herald_public.current_tenant_id() and kind = 'twilio' and twilio_account_sid = $1
              order by status = 'active' desc, created_at limit 1`,
              [accountSid],
            ),
          );
          return rows[0]?.id;
        });
        if (!found) {
          // Not remembered: an account added a moment from now must be found.
          accounts.forget(accountKey);
          return refuse(res, 404, "UNKNOWN_ACCOUNT", "This tenant has no Twilio account with that AccountSid.");
        }
        accountId = found;
      }
      const verdict = await verify(req, params, tenantId, accountId);
      if (verdict !== "verified") {
        logger.warn({ tenant: tenantId, verdict }, "refused a status callback: signature not verified");
        // The account may have been replaced (same SID, new row): look it up afresh next time.
        accounts.forget(accountKey);
        return refuse(
          res,
          403,
          "INVALID_SIGNATURE",
          "The request is not signed by the account that sent this message.",
        );
      }

      const errorCode = params.ErrorCode || null;
      const recipient = parseAddress(params.To);
      // Acknowledged once journaled; applied to the delivery right after (src/provider-callbacks/reports.ts).
      const carrierOptOut = errorCode === CARRIER_OPT_OUT && recipient !== undefined;
      try {
        await reports.acknowledge(tenantId, [
          {
            provider: "twilio",
            delivery_id: deliveryId ?? null,
            provider_message_id: messageSid,
            event: status.slice(0, 40),
            status: STATUS_EFFECT[status] ?? null,
            dedupe_key: `twilio:${messageSid}:${status}`.slice(0, 200),
            error_code: errorCode?.slice(0, 50) ?? null,
            occurred_at: null,
            opt_out: carrierOptOut ? "carrier_opt_out" : null,
            channel: carrierOptOut ? recipient.channel : null,
            address: carrierOptOut ? recipient.number : null,
          },
        ]);
      } catch (error) {
        // The tenant the URL names does not exist (its journal rows have no tenant to belong to).
        if (error instanceof KeyError || (error as { code?: string }).code === "23503")
          return refuse(res, 404, "UNKNOWN_TENANT", "No such tenant.");
        throw error;
      }
      res.status(204).end();
    }, logger),
  );

  return router;
}
