import type { Browser, Page } from "puppeteer-core";
import { afterAll, beforeAll, expect, it } from "vitest";
import { unsubscribeToken } from "../src/messages/unsubscribe.ts";
import { useApiServer } from "./helpers/api.ts";
import { launchChromium, type HeadlessChromium } from "./helpers/browser.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedExtraTenant, type TenantFixture } from "./helpers/fixtures.ts";
import { asWorker } from "./helpers/messaging.ts";

/**
 * The unsubscribe link's page in a real headless Chromium with JavaScript
 * off, as a person who clicked the link in an email sees it: unsubscribed at
 * once, the tenant's name (escaped), a Resubscribe button that is a plain
 * form, and an Unsubscribe button after it. Chromium: test/helpers/browser.ts.
 */

const db = useTestDatabase();
const api = useApiServer(db);
let chromium: HeadlessChromium;
let browser: Browser;
let t: TenantFixture;
const NAME = `Acme & <Sons> "Shop"`;

beforeAll(async () => {
  t = await seedExtraTenant(db.current, "acme-sons");
  await db.current.root.query("update herald_public.tenants set name = $2 where id = $1", [t.id, NAME]);
  chromium = await launchChromium();
  browser = chromium.browser;
});

afterAll(async () => {
  await chromium?.close();
});

const state = () =>
  asWorker(db.current, t, async (c) => {
    const { rows } = await c.query(
      `select c.email_subscribed as subscribed,
              (select count(*)::int from herald_public.consent_events e where e.contact_id = c.id and e.source = 'unsubscribe_link') as events,
              (select count(*)::int from herald_public.suppressions s where s.kind = 'email' and s.reason = 'unsubscribe') as suppressions
         from herald_public.contacts c where c.id = $1`,
      [t.contactId],
    );
    return rows[0] as { subscribed: boolean; events: number; suppressions: number };
  });

async function clickAndWait(page: Page, selector: string) {
  await Promise.all([page.waitForNavigation(), page.click(selector)]);
}

it("unsubscribes on opening, then resubscribes and unsubscribes with JavaScript disabled", async () => {
  const page = await browser.newPage();
  await page.setJavaScriptEnabled(false);
  const token = unsubscribeToken(api.config.unsubscribeKey, t.id, t.contactId);
  const response = await page.goto(`${api.current.url}/unsubscribe/${token}`);
  expect(response?.status()).toBe(200);
  expect(await page.$eval("h1", (h) => h.textContent)).toBe("You are unsubscribed");
  // The tenant's name, as text: escaped, not markup.
  expect(await page.$eval("p", (p) => p.textContent)).toContain(`${NAME} will send no more marketing email`);
  expect(await page.$$("script")).toHaveLength(0);
  expect(await state()).toEqual({ subscribed: false, events: 1, suppressions: 1 });

  await clickAndWait(page, "form button[type=submit]");
  expect(await page.$eval("h1", (h) => h.textContent)).toBe("You are subscribed again");
  expect(await state()).toEqual({ subscribed: true, events: 2, suppressions: 0 });

  await clickAndWait(page, "form button[type=submit]");
  expect(await page.$eval("h1", (h) => h.textContent)).toBe("You are unsubscribed");
  expect(await state()).toEqual({ subscribed: false, events: 3, suppressions: 1 });

  // Reloading the page changes nothing more.
  await page.reload();
  expect(await state()).toEqual({ subscribed: false, events: 3, suppressions: 1 });

  // An altered link: the page says so, and nothing is written.
  const altered = await page.goto(
    `${api.current.url}/unsubscribe/${token.slice(0, -1)}${token.endsWith("A") ? "B" : "A"}`,
  );
  expect(altered?.status()).toBe(404);
  expect(await page.$eval("h1", (h) => h.textContent)).toBe("This link is not valid");
  expect(await state()).toEqual({ subscribed: false, events: 3, suppressions: 1 });
  await page.close();
});
