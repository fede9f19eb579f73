import express, { type Request, type Response, type Router } from "express";
import type pg from "pg";
import { KeyError, type Keyring } from "../../crypto/keyring.ts";
import { isDatabaseUnavailable } from "../../db/availability.ts";
import { escapeHtml } from "../../html.ts";
import type { Logger } from "../../logger.ts";
import { readUnsubscribeToken } from "../../messages/unsubscribe.ts";
import { inTenant } from "../../provider-callbacks/tenant.ts";
import { unavailable } from "../responses.ts";

/**
 * The unsubscribe link of a marketing email (src/messages/unsubscribe.ts):
 *
 *   POST /unsubscribe/:token              body List-Unsubscribe=One-Click (RFC 8058): unsubscribed, no page needed
 *   GET  /unsubscribe/:token              unsubscribed, and a page saying so with a Resubscribe button
 *   POST /unsubscribe/:token/resubscribe  subscribed again (the page's button; plain HTML forms, no JavaScript)
 *
 * Each writes, in the token's tenant only, a consent event and the contact's
 * email flag, and adds (or, resubscribing, removes) an `unsubscribe`
 * suppression of the address; a repeat changes nothing. A token Herald did
 * not sign — forged, altered, another tenant's id spliced in — is a 404
 * before any database access. Bodies are at most 1 kB; each client address
 * gets a bounded number of requests a minute.
 */

export interface UnsubscribeContext {
  /** herald_authenticator connections (the webhooks' pool: a flood here cannot starve the API). */
  pool: pg.Pool;
  keyring: Keyring;
  key: Buffer;
  logger: Logger;
}

/** Requests per client address per minute, in this process. */
const PER_CLIENT_PER_MINUTE = 60;
/** Client addresses tracked at once (the map is cleared when full: bounded memory under a spray of addresses). */
const MAX_CLIENTS = 10_000;

function clientLimit(): express.RequestHandler {
  let window = Math.floor(Date.now() / 60_000);
  let counts = new Map<string, number>();
  return (req, res, next) => {
    const now = Math.floor(Date.now() / 60_000);
    if (now !== window || counts.size >= MAX_CLIENTS) [window, counts] = [now, new Map()];
    const client = req.ip ?? "";
    const n = (counts.get(client) ?? 0) + 1;
    counts.set(client, n);
    if (n > PER_CLIENT_PER_MINUTE) {
      res.status(429).set("Retry-After", "60").type("text/plain").send("Too many requests; try again in a minute.");
      return;
    }
    next();
  };
}

const page = (title: string, body: string) => `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>${escapeHtml(title)}</title>
<style>body{font-family:system-ui,sans-serif;max-width:32em;margin:3em auto;padding:0 1em;line-height:1.5}button{font:inherit;padding:.4em 1em}</style>
</head><body>${body}</body></html>`;

function answer(res: Response, token: string, tenantName: string, subscribed: boolean) {
  const name = escapeHtml(tenantName);
  const action = `/unsubscribe/${token}`;
  res
    .status(200)
    .set("Cache-Control", "no-store")
    .set("Referrer-Policy", "no-referrer")
    .type("html")
    .send(
      subscribed
        ? page(
            `Subscribed to ${tenantName}`,
            `<h1>You are subscribed again</h1><p>${name} may send you email at this address again.</p>
<form method="post" action="${action}"><input type="hidden" name="List-Unsubscribe" value="One-Click"><button type="submit">Unsubscribe</button></form>`,
          )
        : page(
            `Unsubscribed from ${tenantName}`,
            `<h1>You are unsubscribed</h1><p>${name} will send no more marketing email to this address. Messages you asked for, such as receipts, may still arrive.</p>
<form method="post" action="${action}/resubscribe"><button type="submit">Resubscribe</button></form>`,
          ),
    );
}

const notFound = (res: Response) =>
  res
    .status(404)
    .set("Cache-Control", "no-store")
    .type("html")
    .send(
      page(
        "Link not valid",
        "<h1>This link is not valid</h1><p>Use the unsubscribe link of an email you received.</p>",
      ),
    );

/** RFC 8058's body, form-encoded or multipart. */
function isOneClick(req: Request): boolean {
  const body: unknown = req.body;
  if (typeof body === "string") return /name="?List-Unsubscribe"?\r?\n\r?\nOne-Click/i.test(body);
  return (body as Record<string, unknown> | undefined)?.["List-Unsubscribe"] === "One-Click";
}

export function unsubscribeRoutes(ctx: UnsubscribeContext): Router {
  const router = express.Router();
  router.use(clientLimit());
  const form = [
    express.urlencoded({ extended: false, limit: "1kb", parameterLimit: 10 }),
    express.text({ type: "multipart/form-data", limit: "1kb" }),
  ];

  const act =
    (subscribe: boolean, detail: string, check?: (req: Request) => boolean) => async (req: Request, res: Response) => {
      const token = String(req.params.token);
      const named = readUnsubscribeToken(ctx.key, token);
      if (!named) return notFound(res);
      if (check && !check(req)) {
        res.status(400).type("text/plain").send("Expected the body List-Unsubscribe=One-Click.");
        return;
      }
      let result: { tenant_name: string | null; subscribed: boolean | null } | undefined;
      try {
        result = await inTenant(
          ctx,
          named.tenantId,
          async (client) =>
            (
              await client.query(
                "select (r).tenant_name, (r).subscribed from (select herald_hidden.email_link_consent($1, $2, $3) as r) x",
                [named.contactId, subscribe, detail],
              )
            ).rows[0],
          "unsubscribe_link",
        );
      } catch (error) {
        if (isDatabaseUnavailable(error)) return unavailable(res);
        // A tenant deleted since the email went (its keys are gone with it): nothing to change.
        if (error instanceof KeyError) return notFound(res);
        throw error;
      }
      if (!result?.tenant_name) return notFound(res);
      ctx.logger.info(
        { tenant: named.tenantId, subscribed: result.subscribed },
        "email consent from an unsubscribe link",
      );
      answer(res, token, result.tenant_name, Boolean(result.subscribed));
    };

  router.post("/:token", ...form, act(false, "one-click", isOneClick));
  router.get("/:token", act(false, "page"));
  router.post("/:token/resubscribe", ...form, act(true, "page"));
  return router;
}
