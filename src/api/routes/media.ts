import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import express, { type Request, type Response, type Router } from "express";
import type pg from "pg";
import { z } from "zod";
import type { Authenticator } from "../../auth.ts";
import type { Config } from "../../config.ts";
import type { Keyring } from "../../crypto/keyring.ts";
import { withSession } from "../../db/session.ts";
import { ROLES } from "../../db/urls.ts";
import type { Logger } from "../../logger.ts";
import { accountCredential } from "../../provider-callbacks/tenant.ts";
import { SANDBOX_SYSTEM_TWILIO } from "../../sandbox/sandbox.ts";
import { graphqlGate } from "./graphql.ts";
import { refuse } from "../responses.ts";

/**
 * `GET /media/inbound/:inboundMessageId/:n`: medium n (from 0) of an inbound
 * MMS or WhatsApp message, for the tenant's members (a JWT or API key, as
 * for GraphQL). The provider keeps the bytes behind the account's
 * credentials; Herald fetches them with the credentials of the account that
 * received the message and streams them through, bounded in size and time.
 * Another tenant's message, an operator's token, a medium that is not there:
 * 404, the same answer for each. Only Twilio's media URLs of that very account
 * are fetched (https://api.twilio.com/2010-04-01/Accounts/<its SID>/Messages/…/Media/…;
 * in development also the local sandbox's), so a stored URL can never send
 * the credentials anywhere else.
 */

/** Largest medium passed through (Twilio: MMS 5 MB; WhatsApp documents up to 100 MB are not served here). */
export const MEDIA_MAX_BYTES = 16 * 1024 * 1024;
/** The provider's answer, headers to last byte. */
export const MEDIA_TIMEOUT_MS = 30_000;

const params = z.object({ id: z.uuid(), n: z.coerce.number().int().min(0).max(9) });
/** Twilio's media path, with the account SID to compare. */
const MEDIA_PATH =
  /^(?:\/sandbox\/twilio)?\/2010-04-01\/Accounts\/(AC[0-9a-f]{32})\/Messages\/(?:MM|SM)[0-9a-f]{32}\/Media\/ME[0-9a-f]{32}$/;
/** Shown inline only when it cannot run as a page of Herald's origin. */
const INLINE = /^(image\/(jpeg|png|gif|webp|bmp)|audio\/[a-z0-9.+-]+|video\/[a-z0-9.+-]+|application\/pdf)$/;

interface Row {
  url: string | null;
  content_type: string | null;
  account: "tenant" | "system";
  provider_account_id: string | null;
  twilio_account_sid: string | null;
  twilio_api_key_sid: string | null;
}

const notFound = (res: Response) => refuse(res, 404, "NOT_FOUND", "No such medium.");

/**
 * Whether `url` is the provider's medium of `accountSid` (and nothing else may
 * be fetched with its credentials): Twilio's own API, or a stand-in's origin
 * the operator named (HERALD_TWILIO_MEDIA_ORIGINS; in development, Herald's
 * own sandbox), under the sandbox's `/sandbox/twilio` prefix.
 */
export function mediumUrlAllowed(url: string, accountSid: string, standIns: string[]): boolean {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return false;
  }
  if (parsed.search || parsed.hash || parsed.username || parsed.password) return false;
  const path = MEDIA_PATH.exec(parsed.pathname);
  if (!path || path[1] !== accountSid) return false;
  const sandboxPath = parsed.pathname.startsWith("/sandbox/");
  if (parsed.origin === "https://api.twilio.com") return !sandboxPath;
  return sandboxPath && standIns.includes(parsed.origin);
}

export function mediaRoutes(options: {
  authenticator: Authenticator;
  /** Request connections (the member's session). */
  requests: pg.Pool;
  /** Connections that may act as the worker (the account's credential). */
  webhooks: pg.Pool;
  keyring: Keyring;
  config: Config;
  logger: Logger;
}): Router {
  const { config, logger } = options;
  const router = express.Router();
  const standIns = [
    ...config.twilioMediaOrigins.map((o) => new URL(o).origin),
    ...(config.development ? [new URL(config.publicUrl).origin] : []),
  ];
  router.get(
    "/inbound/:id/:n",
    ...graphqlGate(options.authenticator, options.requests, logger),
    async (req: Request, res: Response) => {
      const identity = req.heraldIdentity;
      const parsed = params.safeParse(req.params);
      if (!parsed.success || !identity?.tenantId || identity.pgSettings.role !== ROLES.member) return notFound(res);
      const { id, n } = parsed.data;
      const { rows } = await withSession(
        options.requests,
        { role: ROLES.member, tenantId: identity.tenantId, userId: identity.userId },
        (client) =>
          client.query<Row>(
            `select i.media_urls[$2::int + 1] as url, i.media_types[$2::int + 1] as content_type, i.account, i.provider_account_id,
                    a.twilio_account_sid, a.twilio_api_key_sid
               from herald_public.inbound_messages i
               left join herald_public.provider_accounts a on a.tenant_id = i.tenant_id and a.id = i.provider_account_id
              where i.tenant_id = herald_public.current_tenant_id() and i.id = $1`,
            [id, n],
          ),
      );
      const row = rows[0];
      if (!row?.url || !row.content_type) return notFound(res);

      // The credentials of the account that received it.
      let credentials: { accountSid: string; user: string; secret: string } | undefined;
      if (row.account === "system") {
        const system = config.twilio ?? (config.development ? SANDBOX_SYSTEM_TWILIO : undefined);
        if (system) credentials = { accountSid: system.accountSid, user: system.accountSid, secret: system.authToken };
      } else if (row.provider_account_id && row.twilio_account_sid) {
        const credential = await accountCredential(
          { pool: options.webhooks, keyring: options.keyring },
          identity.tenantId,
          row.provider_account_id,
        );
        if (credential?.kind === "twilio")
          credentials = {
            accountSid: row.twilio_account_sid,
            user: row.twilio_api_key_sid ?? row.twilio_account_sid,
            secret: credential.secret,
          };
      }
      if (!credentials || !mediumUrlAllowed(row.url, credentials.accountSid, standIns)) {
        logger.warn(
          { tenant: identity.tenantId, inbound: id },
          "an inbound medium cannot be fetched from its provider",
        );
        return notFound(res);
      }

      let upstream: globalThis.Response;
      try {
        upstream = await fetch(row.url, {
          headers: {
            authorization: `Basic ${Buffer.from(`${credentials.user}:${credentials.secret}`).toString("base64")}`,
          },
          // Twilio answers with a redirect to where the bytes are; fetch drops the credentials on a cross-origin redirect.
          redirect: "follow",
          signal: AbortSignal.timeout(MEDIA_TIMEOUT_MS),
        });
      } catch (error) {
        logger.warn({ err: { message: (error as Error).message } }, "fetching an inbound medium failed");
        return refuse(res, 502, "PROVIDER_UNAVAILABLE", "The provider did not give the medium; try again.");
      }
      if (upstream.status === 404) return notFound(res);
      const length = Number(upstream.headers.get("content-length") ?? 0);
      if (!upstream.ok || !upstream.body || length > MEDIA_MAX_BYTES) {
        await upstream.body?.cancel();
        return refuse(res, 502, "PROVIDER_UNAVAILABLE", "The provider did not give the medium.");
      }
      res.status(200);
      res.set({
        // The type Twilio reported when the message came in, not one a later answer claims.
        "content-type": row.content_type,
        "content-disposition": INLINE.test(row.content_type) ? "inline" : "attachment",
        "x-content-type-options": "nosniff",
        "content-security-policy": "sandbox; default-src 'none'",
        "cache-control": "private, max-age=300",
      });
      let seen = 0;
      const bounded = Readable.fromWeb(upstream.body as import("node:stream/web").ReadableStream<Uint8Array>).filter(
        (chunk: Buffer) => {
          seen += chunk.length;
          if (seen > MEDIA_MAX_BYTES) throw new Error("the medium is larger than Herald passes through");
          return true;
        },
      );
      try {
        await pipeline(bounded, res);
      } catch (error) {
        // Headers are gone: the connection is cut, and the client sees a short body.
        logger.warn({ err: { message: (error as Error).message } }, "streaming an inbound medium stopped");
        res.destroy();
      }
    },
  );
  return router;
}
