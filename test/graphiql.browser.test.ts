import type { Browser } from "puppeteer-core";
import { afterAll, beforeAll, expect, it } from "vitest";
import { useApiServer } from "./helpers/api.ts";
import { launchChromium, type HeadlessChromium } from "./helpers/browser.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";

/**
 * GraphiQL (Ruru, served at /graphiql in development) in a real headless
 * Chromium: with a tenant's credential in its headers, it introspects the
 * schema with the standard introspection query, and its docs explorer lists
 * the Query type's fields. Chromium: test/helpers/browser.ts.
 */

const db = useTestDatabase();
const api = useApiServer(db, { env: () => ({ NODE_ENV: "development" }) });
let tenant: TenantFixture;
let chromium: HeadlessChromium;
let browser: Browser;

beforeAll(async () => {
  ({ a: tenant } = await seedTwoTenants(db.current));
  chromium = await launchChromium();
  browser = chromium.browser;
});

afterAll(async () => {
  await chromium?.close();
});

it("GraphiQL loads the schema with a tenant's API key, and its docs explorer shows the Query fields", async () => {
  const page = await browser.newPage();
  /** Status of each request GraphiQL sent to /graphql with the credential. */
  const authorizedRequests: number[] = [];
  page.on("response", (response) => {
    const request = response.request();
    if (request.url().endsWith("/graphql") && request.method() === "POST" && request.headers().authorization)
      authorizedRequests.push(response.status());
  });
  // GraphiQL restores its tabs, each with the request headers typed into its
  // headers editor, from its own storage when "persist headers" is on: put a
  // tab holding the credential there, on its origin, before it first loads.
  await page.goto(`${api.current.url}/healthz`);
  await page.evaluate((authorization) => {
    const headers = JSON.stringify({ Authorization: authorization });
    const tab = {
      id: "herald-test",
      hash: null,
      title: "Herald",
      query: "{ currentTenant { name } }",
      variables: null,
      headers,
      operationName: null,
      response: null,
    };
    localStorage.setItem("graphiql:shouldPersistHeaders", "true");
    localStorage.setItem("graphiql:headers", headers);
    localStorage.setItem("graphiql:tabState", JSON.stringify({ tabs: [tab], activeTabIndex: 0 }));
  }, `Bearer ${tenant.apiKeySecret}`);
  await page.goto(`${api.current.url}/graphiql`, { waitUntil: "networkidle0" });
  // Its first introspection can start before the headers editor is ready, and
  // so go without the header; re-fetching the schema (Shift-Ctrl-R, in the
  // query editor) sends what the headers editor holds.
  await page.waitForSelector(".graphiql-query-editor .monaco-editor", { timeout: 20_000 });
  await page.click(".graphiql-query-editor .monaco-editor");
  await page.keyboard.down("Shift");
  await page.keyboard.down("Control");
  await page.keyboard.press("KeyR");
  await page.keyboard.up("Control");
  await page.keyboard.up("Shift");

  await page.locator('[aria-label="Show Documentation Explorer"]').click();
  const explorer = ".graphiql-doc-explorer";
  await page.waitForSelector(`${explorer} a.graphiql-doc-explorer-type-name`, { timeout: 20_000 });
  // The schema's root types, then the Query type's own fields.
  await page.locator(`${explorer} ::-p-text(Query)`).click();
  await page.waitForFunction(
    (selector) => document.querySelector(selector)?.textContent?.includes("allContacts"),
    { timeout: 20_000 },
    explorer,
  );
  const text = await page.$eval(explorer, (element) => element.textContent ?? "");
  expect(text).toContain("allContacts");
  expect(text).toContain("currentTenant");
  // The schema came from Herald's API, with the credential, answered (not refused by a guard).
  expect(authorizedRequests.length).toBeGreaterThan(0);
  expect(authorizedRequests.every((status) => status === 200)).toBe(true);
  await page.close();
}, 60_000);
