import { createHmac, randomBytes } from "node:crypto";
import express, { type Request, type Response, type Router } from "express";
import { outcomeFor, sameSecret, sleep, type SandboxCore, type SandboxMessage } from "./core.ts";

/**
 * The sandbox's Meta: the WhatsApp Cloud API's send endpoint of the Graph
 * API, and the webhooks Meta posts — statuses after each send (sent, then
 * delivered and read, or failed: see `outcomeFor`, and …0004, outside the
 * 24-hour window: 131047), and inbound texts on demand (`textIn`, or
 * `POST /meta/inbound`) — signed with `X-Hub-Signature-256` under the
 * account's app secret, as Meta signs them.
 *
 * Routes (relative to where the sandbox is mounted):
 *   GET  /meta/:version/:phoneNumberId            the number it sends from (`display_phone_number`)
 *   POST /meta/:version/:phoneNumberId/messages   JSON, `Authorization: Bearer <access token>`
 *   POST /meta/inbound                            a phone writes to a number id (JSON or form: phone_number_id, from, body)
 *
 * Credentials it accepts without being told, for development: the access
 * token `sandbox-meta:<phone number id>` and the app secret
 * `sandbox-meta-secret:<phone number id>`; tests register others
 * (`addAccount`).
 */

export const sandboxMetaToken = (phoneNumberId: string) => `sandbox-meta:${phoneNumberId}`;
export const sandboxMetaAppSecret = (phoneNumberId: string) => `sandbox-meta-secret:${phoneNumberId}`;

export interface MetaSandboxAccount {
  accessToken: string;
  appSecret: string;
  /** Where Meta posts this number's webhooks (Herald's `/webhooks/meta/<account id>`). */
  webhookUrl?: string;
  /** The number's display number (digits), as webhooks' metadata carry it. */
  displayPhoneNumber?: string;
}

/** One Graph API send request as received (tests read the JSON). */
export interface MetaSendRequest {
  phoneNumberId: string;
  wamid: string;
  body: Record<string, unknown>;
}

export interface MetaInbound {
  phoneNumberId: string;
  /** E.164 or digits. */
  from: string;
  body: string;
  /** Default: a new one. */
  wamid?: string;
}

export interface SandboxMeta {
  addAccount(phoneNumberId: string, account: MetaSandboxAccount): void;
  /** Send requests received so far (newest last, at most `keep`). */
  requests: MetaSendRequest[];
  /** A phone writes to a number: the signed webhook posted to the number's URL; Herald's HTTP status. */
  textIn(text: MetaInbound): Promise<number>;
  /** A notification signed as Meta signs it (tests post their own with it). */
  sign(appSecret: string, body: string): string;
}

const graphError = (res: Response, status: number, code: number, message: string, type = "OAuthException") =>
  res.status(status).json({ error: { message, type, code, fbtrace_id: randomBytes(8).toString("hex") } });

const MEDIA = ["image", "video", "audio", "document"] as const;

export const metaHubSignature = (appSecret: string, body: string) =>
  `sha256=${createHmac("sha256", appSecret).update(body).digest("hex")}`;

export function addMetaRoutes(
  router: Router,
  core: SandboxCore,
  options: {
    /** Where a number's webhooks go when no account says so (development: looked up in Herald's database). */
    resolveWebhook?: (phoneNumberId: string) => Promise<string | undefined>;
    page: boolean;
  },
): SandboxMeta {
  const accounts = new Map<string, MetaSandboxAccount>();
  const requests: MetaSendRequest[] = [];
  const accountOf = (id: string): MetaSandboxAccount =>
    accounts.get(id) ?? { accessToken: sandboxMetaToken(id), appSecret: sandboxMetaAppSecret(id) };
  const webhookOf = async (id: string) =>
    accountOf(id).webhookUrl ?? (await options.resolveWebhook?.(id).catch(() => undefined));

  /** Posts one notification for the number, signed with its app secret; Herald's status (0: nowhere to post). */
  const post = async (phoneNumberId: string, value: Record<string, unknown>): Promise<number> => {
    const url = await webhookOf(phoneNumberId);
    if (!url) return 0;
    const account = accountOf(phoneNumberId);
    const body = JSON.stringify({
      object: "whatsapp_business_account",
      entry: [
        {
          id: "0",
          changes: [
            {
              field: "messages",
              value: {
                messaging_product: "whatsapp",
                metadata: {
                  display_phone_number: account.displayPhoneNumber ?? phoneNumberId,
                  phone_number_id: phoneNumberId,
                },
                ...value,
              },
            },
          ],
        },
      ],
    });
    const response = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json", "x-hub-signature-256": metaHubSignature(account.appSecret, body) },
      body,
    });
    await response.arrayBuffer();
    return response.status;
  };

  const describe = (body: Record<string, unknown>): string => {
    const type = String(body.type);
    if (type === "text") return String((body.text as { body?: string }).body);
    if (type === "template") {
      const t = body.template as { name: string; language: { code: string }; components?: unknown[] };
      return `template ${t.name} (${t.language.code}) ${JSON.stringify(t.components ?? [])}`;
    }
    const media = body[type] as { link: string; caption?: string };
    return `[${type}] ${media.link}${media.caption ? ` ${media.caption}` : ""}`;
  };

  /** Why a send request is malformed (Meta's code 100, invalid parameter), or null. */
  const malformed = (body: Record<string, unknown>): string | null => {
    if (body.messaging_product !== "whatsapp") return "messaging_product must be whatsapp";
    if (typeof body.to !== "string" || !/^[1-9][0-9]{6,14}$/.test(body.to)) return "to must be a phone number";
    const type = body.type;
    if (type === "text") {
      const text = (body.text as { body?: unknown } | undefined)?.body;
      return typeof text === "string" && text.trim() && text.length <= 4096
        ? null
        : "text.body is required (at most 4096)";
    }
    if (type === "template") {
      const t = body.template as { name?: unknown; language?: { code?: unknown } } | undefined;
      return typeof t?.name === "string" && typeof t.language?.code === "string"
        ? null
        : "template.name and template.language.code are required";
    }
    if (MEDIA.includes(type as (typeof MEDIA)[number])) {
      const link = (body[type as string] as { link?: unknown } | undefined)?.link;
      return typeof link === "string" && link.startsWith("https://")
        ? null
        : `${String(type)}.link must be an https URL`;
    }
    return "type must be text, template, image, video, audio or document";
  };

  // A phone number id, as the Graph API describes it: the number it sends from
  // (an account registered without one sends from the id's own digits).
  router.get("/meta/:version/:phoneNumberId", (req: Request, res: Response) => {
    const phoneNumberId = String(req.params.phoneNumberId);
    const account = accountOf(phoneNumberId);
    const [scheme, token] = (req.headers.authorization ?? "").split(" ");
    if (scheme !== "Bearer" || !sameSecret(token ?? "", account.accessToken))
      return graphError(res, 401, 190, "Invalid OAuth access token - Cannot parse access token");
    res.json({ id: phoneNumberId, display_phone_number: account.displayPhoneNumber ?? phoneNumberId });
  });

  router.post(
    "/meta/:version/:phoneNumberId/messages",
    express.json({ limit: "64kb" }),
    async (req: Request, res: Response) => {
      if (core.faults.latencyMs) await sleep(core.faults.latencyMs);
      // A 429 burst, as Meta answers a WABA over its rate limit: 400 with code 80007, nothing stored.
      if (core.faults.rateLimitBurst) {
        core.faults.rateLimitBurst--;
        return graphError(res, 400, 80007, "(#80007) Rate limit hit");
      }
      // Injected errors: a 500, nothing stored (whether Meta took it is, for the client, unknown).
      if (core.faults.errorRate && Math.random() < core.faults.errorRate)
        return graphError(res, 500, 2, "An unexpected error has occurred. Please retry your request later.");
      const phoneNumberId = String(req.params.phoneNumberId);
      const [scheme, token] = (req.headers.authorization ?? "").split(" ");
      if (scheme !== "Bearer" || !sameSecret(token ?? "", accountOf(phoneNumberId).accessToken))
        return graphError(res, 401, 190, "Invalid OAuth access token - Cannot parse access token");
      const body = (req.body ?? {}) as Record<string, unknown>;
      const problem = malformed(body);
      if (problem) return graphError(res, 400, 100, `(#100) Invalid parameter: ${problem}`);
      const wamid = `wamid.${randomBytes(24).toString("base64url")}`;
      const to = `+${String(body.to)}`;
      requests.push({ phoneNumberId, wamid, body });
      if (requests.length > core.keep) requests.splice(0, requests.length - core.keep);
      const stored: SandboxMessage = {
        id: wamid,
        provider: "meta",
        account: phoneNumberId,
        channel: "whatsapp",
        from: phoneNumberId,
        to,
        body: describe(body),
        createdAt: new Date(),
      };
      core.remember(stored);
      // Statuses, as Meta reports them: sent, then delivered and read, or failed with its error.
      const outcome = outcomeFor(to);
      const code = /0004$/.test(to) ? 131047 : outcome.status === "delivered" ? null : 131026;
      const statuses = code === null ? ["sent", "delivered", "read"] : ["sent", "failed"];
      const opaque = typeof body.biz_opaque_callback_data === "string" ? body.biz_opaque_callback_data : undefined;
      core.schedule(
        statuses.map(
          (status) => () =>
            post(phoneNumberId, {
              statuses: [
                {
                  id: wamid,
                  status,
                  timestamp: String(Math.floor(Date.now() / 1000)),
                  recipient_id: String(body.to),
                  ...(opaque ? { biz_opaque_callback_data: opaque } : {}),
                  ...(status === "failed"
                    ? { errors: [{ code, title: code === 131047 ? "Re-engagement message" : "Message undeliverable" }] }
                    : {}),
                },
              ],
            }),
        ),
      );
      res.status(200).json({
        messaging_product: "whatsapp",
        contacts: [{ input: String(body.to), wa_id: String(body.to) }],
        messages: [{ id: wamid }],
      });
    },
  );

  const textIn = async (text: MetaInbound): Promise<number> => {
    const from = text.from.replace(/^\+/, "");
    return post(text.phoneNumberId, {
      contacts: [{ profile: { name: "Sandbox phone" }, wa_id: from }],
      messages: [
        {
          from,
          id: text.wamid ?? `wamid.${randomBytes(24).toString("base64url")}`,
          timestamp: String(Math.floor(Date.now() / 1000)),
          type: "text",
          text: { body: text.body },
        },
      ],
    });
  };

  if (options.page) {
    // The control API / a page form: a phone writes to one of the tenants' Meta numbers.
    router.post(
      "/meta/inbound",
      express.urlencoded({ extended: false, limit: "16kb" }),
      express.json({ limit: "16kb" }),
      async (req: Request, res: Response) => {
        const { phone_number_id: id, from, body } = (req.body ?? {}) as Record<string, unknown>;
        if (typeof id !== "string" || !/^[0-9]{1,32}$/.test(id) || typeof from !== "string" || typeof body !== "string")
          return res.status(400).json({ error: "phone_number_id (digits), from and body are required" });
        const status = await textIn({ phoneNumberId: id, from, body: body.slice(0, 4096) });
        res.json({ status });
      },
    );
  }

  return {
    addAccount: (id, account) => void accounts.set(id, account),
    requests,
    textIn,
    sign: metaHubSignature,
  };
}
