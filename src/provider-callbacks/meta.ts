import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import express, { type Request, type Response, type Router } from "express";
import { z } from "zod";
import { refuse } from "../api/responses.ts";
import type { Logger } from "../logger.ts";
import { providerMessage } from "../providers/errors.ts";
import { sendViaMeta } from "../providers/meta.ts";
import { InboundBatches } from "./inbound-batches.ts";
import { classifyKeyword } from "./keywords.ts";
import type { ProviderReport, ProviderReports } from "./reports.ts";
import { inTenant, TtlCache, verifiedWith, type WebhookContext } from "./tenant.ts";
import { retriable } from "./unavailable.ts";

/**
 * Meta's WhatsApp Cloud API webhooks, one URL per Meta provider account:
 * `/webhooks/meta/<providerAccountId>` (docs/whatsapp-cloud-api.md).
 *
 * - `GET`: the subscription handshake. `hub.mode=subscribe` with the
 *   account's verify token (compared by hash) is answered with
 *   `hub.challenge`; anything else is 403.
 * - `POST`: notifications. The URL names the account, and with it the
 *   tenant — but nothing is believed before `X-Hub-Signature-256` (HMAC-SHA256
 *   of the raw body) verifies with THAT account's app secret: a request
 *   signed with another tenant's secret, or forged, is 403 with nothing
 *   written. Then only changes whose `metadata.phone_number_id` is the
 *   account's own are read: inbound messages go to the inbound store with the
 *   consent keywords (STOP/START/HELP, answered through the Graph API), and
 *   statuses to the report journal (src/provider-callbacks/reports.ts), which
 *   finds deliveries inside the tenant only — a status naming another
 *   tenant's message changes nothing.
 */

export interface MetaWebhookOptions extends WebhookContext {
  logger: Logger;
  reports: ProviderReports;
  /** Meta's Graph API, for keyword replies (the sandbox's in development). */
  metaGraph?: { url: string; version: string };
}

interface MetaAccountRow {
  tenantId: string;
  phoneNumberId: string;
}

interface MetaSecrets {
  appSecret: string;
  accessToken: string;
  /** The account's WhatsApp sender number (E.164), where its contacts write. */
  number: string | null;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Cloud API statuses → what they make of a delivery (`read` implies delivered). */
const STATUS_EFFECT: Record<string, string | null> = {
  sent: "sent",
  delivered: "delivered",
  read: "delivered",
  failed: "failed",
};

const digits = z.string().regex(/^[0-9]{1,32}$/);

/** The parts of a notification Herald reads; anything else is ignored. */
const notification = z.object({
  object: z.literal("whatsapp_business_account"),
  entry: z
    .array(
      z.object({
        changes: z
          .array(
            z.object({
              field: z.string(),
              value: z
                .object({
                  metadata: z.object({ phone_number_id: z.string() }).optional(),
                  messages: z
                    .array(
                      z.object({
                        from: z.string(),
                        id: z.string().min(1).max(500),
                        type: z.string().max(40).optional(),
                        text: z.object({ body: z.string() }).optional(),
                        button: z.object({ text: z.string() }).optional(),
                      }),
                    )
                    .max(1000)
                    .optional(),
                  statuses: z
                    .array(
                      z.object({
                        id: z.string().min(1).max(500),
                        status: z.string().max(40),
                        timestamp: z.string().max(20).optional(),
                        biz_opaque_callback_data: z.string().max(512).optional(),
                        errors: z.array(z.object({ code: z.number().optional() })).optional(),
                      }),
                    )
                    .max(1000)
                    .optional(),
                })
                .loose(),
            }),
          )
          .max(100),
      }),
    )
    .max(100),
});

/** A `wamid` as stored (inbound ids are at most 64 characters; a longer one is kept as its hash). */
export const storedMessageId = (id: string) =>
  id.length <= 64 ? id : `wamid#${createHash("sha256").update(id).digest("base64url")}`;

/** The expected `X-Hub-Signature-256` of a body under an app secret. */
export const metaSignature = (appSecret: string, rawBody: Buffer | string) =>
  `sha256=${createHmac("sha256", appSecret).update(rawBody).digest("hex")}`;

function signatureMatches(received: string, expected: string): boolean {
  const a = Buffer.from(received);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

const MEDIA_TYPES = new Set(["image", "video", "audio", "document", "sticker"]);

export function metaWebhooks(options: MetaWebhookOptions): Router {
  const { logger, reports } = options;
  const ttl = options.keyring.cacheTtlMs;
  const owners = new TtlCache<MetaAccountRow | undefined>(ttl);
  const secrets = new TtlCache<MetaSecrets | undefined>(ttl);
  const inbound = new InboundBatches(options, { provider: "meta" });
  const router = express.Router();
  const raw = express.raw({ type: () => true, limit: "256kb" });

  const ownerOf = async (accountId: string): Promise<MetaAccountRow | undefined> => {
    if (!UUID.test(accountId)) return undefined;
    return owners.get(accountId, async () => {
      const { rows } = await options.pool.query<{ tenant_id: string; phone_number_id: string }>(
        "select tenant_id, phone_number_id from herald_private.meta_account_owner($1)",
        [accountId],
      );
      const row = rows[0];
      return row && { tenantId: row.tenant_id, phoneNumberId: row.phone_number_id };
    });
  };

  const loadSecrets = (tenantId: string, accountId: string) => () =>
    inTenant(
      options,
      tenantId,
      async (client) => {
        const { rows } = await client.query<{ app_secret: string; access_token: string; number: string | null }>(
          `select c.app_secret, c.access_token,
                  (select n.phone_number from herald_public.sender_numbers n
                    where n.tenant_id = herald_public.current_tenant_id() and n.provider_account_id = $1 and n.channel = 'whatsapp'
                    order by n.created_at limit 1) as number
             from herald_hidden.meta_account_credentials($1) c`,
          [accountId],
        );
        const row = rows[0];
        return row && { appSecret: row.app_secret, accessToken: row.access_token, number: row.number };
      },
      "meta",
    );

  router.get("/:accountId", async (req: Request, res: Response) => {
    const query = req.query as Record<string, unknown>;
    const mode = query["hub.mode"];
    const token = query["hub.verify_token"];
    const challenge = query["hub.challenge"];
    const accountId = String(req.params.accountId);
    if (
      mode !== "subscribe" ||
      typeof token !== "string" ||
      token.length > 200 ||
      typeof challenge !== "string" ||
      !/^[A-Za-z0-9._-]{1,200}$/.test(challenge) ||
      !UUID.test(accountId)
    )
      return refuse(
        res,
        403,
        "INVALID_VERIFY_TOKEN",
        "hub.mode=subscribe, the account's hub.verify_token and hub.challenge are required.",
      );
    try {
      const { rows } = await options.pool.query<{ matches: boolean }>(
        "select herald_private.meta_verify_token_matches($1, $2) as matches",
        [accountId, token],
      );
      if (!rows[0]?.matches) return refuse(res, 403, "INVALID_VERIFY_TOKEN", "The verify token is not this account's.");
    } catch (error) {
      logger.error({ err: error }, "checking a Meta verify token failed");
      return refuse(res, 503, "UNAVAILABLE", "Try again later.");
    }
    res.type("text/plain").send(challenge);
  });

  router.post(
    "/:accountId",
    raw,
    retriable(async (req: Request, res: Response) => {
      const signature = req.get("x-hub-signature-256");
      if (!signature) return refuse(res, 403, "MISSING_SIGNATURE", "X-Hub-Signature-256 is required.");
      const accountId = String(req.params.accountId);
      const owner = await ownerOf(accountId);
      if (!owner) {
        owners.forget(accountId);
        return refuse(res, 404, "UNKNOWN_ACCOUNT", "No Meta account has this webhook URL.");
      }
      const body: Buffer = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
      const key = `${owner.tenantId}/${accountId}`;
      const load = loadSecrets(owner.tenantId, accountId);
      const verdict = await verifiedWith(secrets, key, load, (s) =>
        signatureMatches(signature, metaSignature(s.appSecret, body)),
      );
      if (verdict !== "verified") {
        logger.warn({ tenant: owner.tenantId, verdict }, "refused a Meta webhook: signature not verified");
        return refuse(res, 403, "INVALID_SIGNATURE", "The request is not signed with this account's app secret.");
      }

      // Verified: from here on, inside the tenant only.
      let parsed: z.infer<typeof notification>;
      try {
        const result = notification.safeParse(JSON.parse(body.toString("utf8")));
        if (!result.success) return refuse(res, 400, "BAD_REQUEST", "Not a WhatsApp Business Account notification.");
        parsed = result.data;
      } catch {
        return refuse(res, 400, "BAD_REQUEST", "The body is not JSON.");
      }
      const account = (await secrets.get(key, load))!;
      const journal: ProviderReport[] = [];
      const texts: { from: string; body: string; id: string; media: number }[] = [];
      let foreign = 0;
      for (const entry of parsed.entry) {
        for (const change of entry.changes) {
          if (change.field !== "messages") continue;
          // Only the account's own number: the signature vouches for the account, not for every id it names.
          if (change.value.metadata?.phone_number_id !== owner.phoneNumberId) {
            foreign++;
            continue;
          }
          for (const m of change.value.messages ?? []) {
            if (!digits.safeParse(m.from).success) continue;
            texts.push({
              from: `+${m.from}`,
              body: m.text?.body ?? m.button?.text ?? "",
              id: storedMessageId(m.id),
              media: MEDIA_TYPES.has(m.type ?? "") ? 1 : 0,
            });
          }
          for (const s of change.value.statuses ?? []) {
            const status = s.status.toLowerCase();
            const seconds = Number(s.timestamp);
            const code = s.errors?.[0]?.code;
            journal.push({
              provider: "meta",
              delivery_id:
                s.biz_opaque_callback_data && UUID.test(s.biz_opaque_callback_data) ? s.biz_opaque_callback_data : null,
              provider_message_id: s.id.slice(0, 300),
              event: status.slice(0, 40) || "unknown",
              status: STATUS_EFFECT[status] ?? null,
              dedupe_key: `meta:${storedMessageId(s.id)}:${status}`.slice(0, 200),
              error_code: code === undefined ? null : String(code).slice(0, 50),
              occurred_at: Number.isFinite(seconds) && seconds > 0 ? new Date(seconds * 1000).toISOString() : null,
              opt_out: null,
              channel: null,
              address: null,
            });
          }
        }
      }
      if (foreign > 0)
        logger.warn(
          { tenant: owner.tenantId, changes: foreign },
          "ignored Meta webhook changes for another phone number id",
        );

      if (journal.length > 0) await reports.acknowledge(owner.tenantId, journal);
      if (texts.length > 0 && !account.number) {
        logger.warn(
          { tenant: owner.tenantId, account: accountId },
          "ignored inbound WhatsApp messages: the Meta account has no whatsapp sender number",
        );
      }
      const replies: { to: string; body: string }[] = [];
      for (const text of account.number ? texts : []) {
        const keyword = classifyKeyword(text.body);
        const result = await inbound.receive(owner.tenantId, {
          channel: "whatsapp",
          to_number: account.number!,
          from_phone: text.from,
          body: text.body.toWellFormed().replaceAll("\u0000", "").slice(0, 4096),
          provider_message_id: text.id,
          media_count: text.media,
          keyword: keyword?.kind ?? null,
          keyword_word: keyword?.word ?? null,
        });
        if (result.error_code) throw new Error(`receiving an inbound message failed (SQLSTATE ${result.error_code})`);
        if (result.reply && !result.duplicate) replies.push({ to: text.from, body: result.reply });
      }
      res.status(200).end();

      // Keyword answers go as WhatsApp messages (inside the 24-hour window the contact just opened), after Meta has its answer.
      for (const reply of replies) {
        void sendViaMeta(
          options.metaGraph,
          { phoneNumberId: owner.phoneNumberId, accessToken: account.accessToken },
          reply,
        ).catch((error: unknown) =>
          logger.warn({ tenant: owner.tenantId, err: providerMessage(error) }, "a keyword reply through Meta failed"),
        );
      }
    }, logger),
  );

  return router;
}
