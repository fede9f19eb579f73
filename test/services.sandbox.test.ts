import http from "node:http";
import express from "express";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTwilioClient } from "../src/providers/twilio.ts";
import { createSandbox, sandboxTwilioToken, type Sandbox } from "../src/sandbox/sandbox.ts";

/**
 * The sandbox's Messaging Services through the real twilio SDK: a service is
 * created and its pool listed (Messaging v1), messages created with a
 * MessagingServiceSid go from a pool number with sticky sender, another
 * account sees nothing of it, and the /sandbox page shows it. No database.
 */

const A = { accountSid: `AC${"a".repeat(32)}`, authToken: sandboxTwilioToken(`AC${"a".repeat(32)}`) };
const B = { accountSid: `AC${"b".repeat(32)}`, authToken: sandboxTwilioToken(`AC${"b".repeat(32)}`) };
const POOL = ["+14155559101", "+14155559102", "+14155559103"];
let sandbox: Sandbox;
let server: http.Server;
let url: string;

beforeAll(async () => {
  sandbox = createSandbox({ callbackDelayMs: 5 });
  const app = express();
  app.use("/sandbox", sandbox.router);
  server = http.createServer(app);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  url = `http://127.0.0.1:${(server.address() as { port: number }).port}/sandbox`;
});

afterAll(async () => {
  await new Promise((resolve) => server?.close(resolve));
});

describe("the sandbox's Messaging Services", () => {
  it("creates a service, lists its pool, and sends from a pool number with sticky sender", async () => {
    const client = createTwilioClient(A, url);
    const service = await client.messaging.v1.services.create({ friendlyName: "Clinic reminders" });
    expect(service.sid).toMatch(/^MG[0-9a-f]{32}$/);
    expect(service.friendlyName).toBe("Clinic reminders");
    sandbox.services.setNumbers(service.sid, POOL);
    const listed = await client.messaging.v1.services(service.sid).phoneNumbers.list();
    expect(listed.map((n) => n.phoneNumber)).toEqual(POOL);
    expect(listed.every((n) => /^PN[0-9a-f]{32}$/.test(n.sid) && n.serviceSid === service.sid)).toBe(true);

    const recipients = ["+14155550201", "+14155550202", "+14155550204", "+14155550205"];
    const send = async (to: string) =>
      (await client.messages.create({ to, messagingServiceSid: service.sid, body: "Reminder" })).from;
    const first = await Promise.all(recipients.map(send));
    const second = await Promise.all(recipients.map(send));
    expect(first.every((from) => POOL.includes(from))).toBe(true);
    expect(new Set(first).size).toBe(3); // the least used number goes to a new recipient
    expect(second).toEqual(first);

    // A number leaving the pool releases its recipients, who get another one (and keep it).
    const leaving = first[0]!;
    sandbox.services.setNumbers(
      service.sid,
      POOL.filter((n) => n !== leaving),
    );
    const moved = await send(recipients[0]!);
    expect(moved).not.toBe(leaving);
    expect(await send(recipients[0]!)).toBe(moved);
    expect(await send(recipients[1]!)).toBe(first[1]);
  });

  it("refuses another account's service, an empty pool, and hides the service from other accounts", async () => {
    const a = createTwilioClient(A, url);
    const b = createTwilioClient(B, url);
    const sid = sandbox.services.add(A.accountSid, { numbers: [] });
    await expect(a.messages.create({ to: "+14155550201", messagingServiceSid: sid, body: "x" })).rejects.toMatchObject({
      code: 21704,
    });
    sandbox.services.setNumbers(sid, ["+14155559111"]);
    await expect(b.messages.create({ to: "+14155550201", messagingServiceSid: sid, body: "x" })).rejects.toMatchObject({
      code: 21701,
    });
    await expect(b.messaging.v1.services(sid).phoneNumbers.list()).rejects.toMatchObject({ status: 404 });
    await expect(b.messaging.v1.services(sid).fetch()).rejects.toMatchObject({ status: 404 });
    await expect(
      createTwilioClient({ ...A, authToken: "wrong" }, url)
        .messaging.v1.services(sid)
        .phoneNumbers.list(),
    ).rejects.toMatchObject({ status: 401 });
  });

  it("shows each service on the /sandbox page, with the recipients stuck to each pool number", async () => {
    const sid = sandbox.services.add(A.accountSid, { numbers: ["+14155559121"], friendlyName: "Page <pool>" });
    await createTwilioClient(A, url).messages.create({ to: "+14155550301", messagingServiceSid: sid, body: "hi" });
    const page = await (await fetch(url)).text();
    expect(page).toContain("<h2>Messaging Services</h2>");
    expect(page).toContain("Page &lt;pool&gt;");
    expect(page).toContain(sid);
    expect(page).toContain("+14155559121 ← +14155550301");
  });

  it("adds a service from the page's form (development has no Twilio console)", async () => {
    const post = (form: Record<string, string>) =>
      fetch(`${url}/twilio/services`, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams(form).toString(),
        redirect: "manual",
      });
    expect((await post({ accountSid: "not an account", numbers: "+14155559131" })).status).toBe(400);
    expect((await post({ accountSid: B.accountSid, numbers: "+14155559131, 12" })).status).toBe(400);
    const added = await post({ accountSid: B.accountSid, name: "Form pool", numbers: "+14155559131, +14155559132" });
    expect(added.status).toBe(303);
    const service = sandbox.services.all().find((s) => s.friendlyName === "Form pool")!;
    expect(service).toMatchObject({ accountSid: B.accountSid, numbers: ["+14155559131", "+14155559132"] });
    const listed = await createTwilioClient(B, url).messaging.v1.services(service.sid).phoneNumbers.list();
    expect(listed.map((n) => n.phoneNumber)).toEqual(service.numbers);
    expect(await (await fetch(url)).text()).toContain('action="/sandbox/twilio/services"');
  });
});
