import http from "node:http";
import express from "express";
import type { Browser } from "puppeteer-core";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createSendGridMailer } from "../src/providers/sendgrid.ts";
import { createTwilioClient } from "../src/providers/twilio.ts";
import { createSandbox, SANDBOX_SYSTEM_SENDGRID_KEY, SANDBOX_SYSTEM_TWILIO } from "../src/sandbox/sandbox.ts";
import { launchChromium, type HeadlessChromium } from "./helpers/browser.ts";

/**
 * The /sandbox page in a real headless Chromium, as a developer reads it:
 * messages grouped under the provider account that sent them, the system
 * account named as Herald's (not as a tenant), a tenant's account by its
 * tenant, and the system SendGrid key shown whole rather than as "…stem".
 * Chromium: test/helpers/browser.ts.
 */

const TENANT_TWILIO = { accountSid: `AC${"7".repeat(32)}`, authToken: "sandbox-token-7" };

let chromium: HeadlessChromium;
let browser: Browser;
let server: http.Server;
let url: string;

beforeAll(async () => {
  const sandbox = createSandbox({
    describeAccount: async (provider, account) =>
      provider === "twilio" && account === TENANT_TWILIO.accountSid ? "tenant acme-clinic" : undefined,
  });
  sandbox.addTwilioAccount(TENANT_TWILIO.accountSid, TENANT_TWILIO.authToken);
  const app = express();
  app.use("/sandbox", sandbox.router);
  server = http.createServer(app);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  url = `http://127.0.0.1:${(server.address() as { port: number }).port}/sandbox`;

  // Through the real SDKs: the system's SMS and email, and a tenant's own Twilio account.
  await createTwilioClient(SANDBOX_SYSTEM_TWILIO, url).messages.create({
    to: "+14155550101",
    from: "+15005550006",
    body: "From the system number",
  });
  await createSendGridMailer(SANDBOX_SYSTEM_SENDGRID_KEY, url).send({
    to: "ada@example.com",
    from: "herald@sandbox.test",
    subject: "Hello",
    text: "From the system sender",
  });
  await createTwilioClient(TENANT_TWILIO, url).messages.create({
    to: "+14155550102",
    from: "+14155550100",
    body: "From Acme's own account",
  });

  chromium = await launchChromium();
  browser = chromium.browser;
});

afterAll(async () => {
  await chromium?.close();
  if (server) {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
});

it("groups messages under the account that sent them, naming the system account and each tenant's", async () => {
  const page = await browser.newPage();
  await page.goto(url, { waitUntil: "load" });
  const intro = await page.$eval("h1 + p", (p) => p.textContent ?? "");
  expect(intro).toContain("grouped by the provider account that sent it");
  expect(intro).not.toMatch(/by tenant/);

  // Each heading with the bodies and account cells of its table.
  const groups = await page.$$eval("h2", (headings) =>
    headings
      .filter((h) => h.nextElementSibling?.tagName === "TABLE")
      .map((h) => {
        const rows = [...h.nextElementSibling!.querySelectorAll("tr")].slice(1);
        return {
          heading: h.textContent,
          accounts: rows.map((r) => r.children[2]!.textContent),
          bodies: rows.map((r) => r.children[7]!.textContent),
        };
      }),
  );
  expect(groups).toEqual([
    {
      heading: "Twilio account of tenant acme-clinic",
      accounts: [TENANT_TWILIO.accountSid],
      bodies: ["From Acme's own account"],
    },
    {
      heading: "Herald's system account (tenants without a provider account of their own)",
      accounts: ["SG.sandbox.system", SANDBOX_SYSTEM_TWILIO.accountSid],
      bodies: ["From the system sender", "From the system number"],
    },
  ]);
  expect(await page.$eval("body", (b) => b.textContent)).not.toContain("…stem");
  await page.close();
}, 60_000);

it("shows an email's from name, reply-to and the headers it was sent with (List-Unsubscribe)", async () => {
  await createSendGridMailer(SANDBOX_SYSTEM_SENDGRID_KEY, url).send({
    from: { email: "herald@sandbox.test", name: "Acme News" },
    replyTo: "help@acme.test",
    personalizations: [
      {
        to: [{ email: "grace@example.com" }],
        headers: {
          "List-Unsubscribe": "<https://herald.example.test/unsubscribe/abc>",
          "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
      },
    ],
    subject: "News",
    text: "With headers",
  });
  const page = await browser.newPage();
  await page.goto(url, { waitUntil: "load" });
  expect(await page.$$eval("pre.headers", (pres) => pres.map((p) => p.textContent))).toEqual([
    "From: Acme News <herald@sandbox.test>\nReply-To: help@acme.test\n" +
      "List-Unsubscribe: <https://herald.example.test/unsubscribe/abc>\nList-Unsubscribe-Post: List-Unsubscribe=One-Click",
  ]);
  await page.close();
}, 60_000);
