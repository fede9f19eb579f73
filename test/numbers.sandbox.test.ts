import http from "node:http";
import express from "express";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTwilioClient } from "../src/providers/twilio.ts";
import { createSandbox, SANDBOX_SYSTEM_TWILIO } from "../src/sandbox/sandbox.ts";
import { startSandboxServer, type SandboxServer } from "./helpers/messaging.ts";

/**
 * The sandbox's phone numbers (src/sandbox/numbers.ts), spoken to by the real
 * Twilio SDK: accounts hold numbers, a number is bought once, availability
 * search returns fictional numbers, update and release, WhatsApp senders,
 * credentials checked as Twilio checks them, and the /sandbox page lists them.
 */

let server: SandboxServer;
const ACCOUNT = `AC${"1".repeat(32)}`;
const OTHER = `AC${"2".repeat(32)}`;
const client = (sid: string, token = `sandbox:${sid}`) =>
  createTwilioClient({ accountSid: sid, authToken: token }, server.url);

beforeAll(async () => {
  server = await startSandboxServer();
});
afterAll(async () => {
  await server?.close();
});

describe("the sandbox's numbers", () => {
  it("searches fictional numbers, sells each once, updates and releases it", async () => {
    const offered = await client(ACCOUNT).availablePhoneNumbers("US").local.list({ areaCode: 212, limit: 5 });
    expect(offered).toHaveLength(5);
    for (const n of offered) expect(n.phoneNumber).toMatch(/^\+121255501\d\d$/);
    const pick = offered[0]!.phoneNumber;

    const bought = await client(ACCOUNT).incomingPhoneNumbers.create({
      phoneNumber: pick,
      smsUrl: "https://a.test/sms",
    });
    expect(bought).toMatchObject({ phoneNumber: pick, smsUrl: "https://a.test/sms", accountSid: ACCOUNT });
    // Bought once: not by the same account again, nor by another.
    for (const sid of [ACCOUNT, OTHER]) {
      await expect(client(sid).incomingPhoneNumbers.create({ phoneNumber: pick })).rejects.toMatchObject({
        code: 21422,
      });
    }
    // Gone from the offer, held by the buyer, invisible to another account.
    const again = await client(ACCOUNT).availablePhoneNumbers("US").local.list({ areaCode: 212, limit: 100 });
    expect(again.map((n) => n.phoneNumber)).not.toContain(pick);
    expect((await client(ACCOUNT).incomingPhoneNumbers.list({ phoneNumber: pick })).map((n) => n.sid)).toEqual([
      bought.sid,
    ]);
    expect(await client(OTHER).incomingPhoneNumbers.list({ phoneNumber: pick })).toEqual([]);
    await expect(
      client(OTHER).incomingPhoneNumbers(bought.sid).update({ smsUrl: "https://evil.test" }),
    ).rejects.toMatchObject({
      status: 404,
    });

    const updated = await client(ACCOUNT)
      .incomingPhoneNumbers(bought.sid)
      .update({ statusCallback: "https://a.test/status" });
    expect(updated.statusCallback).toBe("https://a.test/status");
    expect(await client(ACCOUNT).incomingPhoneNumbers(bought.sid).remove()).toBe(true);
    expect(await client(ACCOUNT).incomingPhoneNumbers.list({ phoneNumber: pick })).toEqual([]);
    expect(server.sandbox.numbers.holderOf(pick)).toBe(SANDBOX_SYSTEM_TWILIO.accountSid);
  });

  it("refuses a wrong credential as Twilio does (20003), and lists WhatsApp senders per account", async () => {
    await expect(client(ACCOUNT, "wrong").incomingPhoneNumbers.list({ limit: 1 })).rejects.toMatchObject({
      status: 401,
      code: 20003,
    });
    server.sandbox.numbers.assign(ACCOUNT, "+14155550901", "whatsapp");
    const senders = await client(ACCOUNT).messaging.v2.channelsSenders.list({ channel: "whatsapp" });
    expect(senders.map((s) => [s.senderId, s.status])).toEqual([["whatsapp:+14155550901", "ONLINE"]]);
    expect(await client(OTHER).messaging.v2.channelsSenders.list({ channel: "whatsapp" })).toEqual([]);
    // The system account is the pool: it holds any number nobody else does, by name.
    const system = client(SANDBOX_SYSTEM_TWILIO.accountSid, SANDBOX_SYSTEM_TWILIO.authToken);
    expect((await system.incomingPhoneNumbers.list({ phoneNumber: "+14155550902" })).map((n) => n.phoneNumber)).toEqual(
      ["+14155550902"],
    );
  });

  it("shows which account holds which number on the /sandbox page", async () => {
    const sandbox = createSandbox({ page: true });
    sandbox.numbers.assign(ACCOUNT, "+14155550950").smsUrl = "https://herald.example.test/webhooks/twilio/sms";
    const app = express();
    app.use("/sandbox", sandbox.router);
    const page = http.createServer(app);
    await new Promise<void>((resolve) => page.listen(0, "127.0.0.1", resolve));
    try {
      const html = await (await fetch(`http://127.0.0.1:${(page.address() as { port: number }).port}/sandbox`)).text();
      expect(html).toContain("Phone numbers");
      expect(html).toMatch(new RegExp(`${ACCOUNT}</td><td>sms</td><td>\\+14155550950</td>`));
      expect(html).toContain("https://herald.example.test/webhooks/twilio/sms");
    } finally {
      await new Promise<void>((resolve) => page.close(() => resolve()));
    }
  });
});
