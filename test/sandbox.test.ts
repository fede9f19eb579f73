import http from "node:http";
import express from "express";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createSendGridMailer } from "../src/providers/sendgrid.ts";
import { createTwilioClient } from "../src/providers/twilio.ts";
import { createSandbox, type Sandbox } from "../src/sandbox/sandbox.ts";

/** The real twilio and @sendgrid/mail SDKs against the sandbox over HTTP: nothing mocked below the SDK. */

const ACCOUNT = { accountSid: `AC${"1".repeat(32)}`, authToken: "sandbox-token-1" };
const SENDGRID_KEY = "SG.sandbox-key-one.abcdefghijklmnop";
let sandbox: Sandbox;
let server: http.Server;
let url: string;

beforeAll(async () => {
  sandbox = createSandbox();
  sandbox.addTwilioAccount(ACCOUNT.accountSid, ACCOUNT.authToken);
  sandbox.addSendGridKey(SENDGRID_KEY);
  const app = express();
  app.use("/sandbox", sandbox.router);
  server = http.createServer(app);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  url = `http://127.0.0.1:${(server.address() as { port: number }).port}/sandbox`;
});

afterAll(async () => {
  await new Promise((resolve) => server?.close(resolve));
});

describe("Twilio Messages API", () => {
  it("sends an SMS and a WhatsApp message through the twilio SDK", async () => {
    const client = createTwilioClient(ACCOUNT, url);
    const sms = await client.messages.create({ to: "+14155550123", from: "+14155550100", body: "Your appointment is at 3pm" });
    expect(sms.sid).toMatch(/^SM[0-9a-f]{32}$/);
    expect(sms.status).toBe("queued");
    expect(sms.accountSid).toBe(ACCOUNT.accountSid);
    const whatsapp = await client.messages.create({ to: "whatsapp:+14155550123", from: "whatsapp:+14155550100", body: "Hola" });
    expect(whatsapp.to).toBe("whatsapp:+14155550123");
    expect(sandbox.messages.slice(-2).map((m) => [m.id, m.channel, m.to, m.body])).toEqual([
      [sms.sid, "sms", "+14155550123", "Your appointment is at 3pm"],
      [whatsapp.sid, "whatsapp", "whatsapp:+14155550123", "Hola"],
    ]);
  });

  it("answers like Twilio: 20003 for a wrong token, 21211 for an invalid To, and stores nothing", async () => {
    const before = sandbox.messages.length;
    const wrong = createTwilioClient({ ...ACCOUNT, authToken: "not-the-token" }, url);
    await expect(wrong.messages.create({ to: "+14155550123", from: "+14155550100", body: "x" })).rejects.toMatchObject({ status: 401, code: 20003 });
    const client = createTwilioClient(ACCOUNT, url);
    await expect(client.messages.create({ to: "12345", from: "+14155550100", body: "x" })).rejects.toMatchObject({
      status: 400,
      code: 21211,
      moreInfo: "https://www.twilio.com/docs/errors/21211",
    });
    await expect(client.messages.create({ to: "whatsapp:+14155550123", from: "+14155550100", body: "x" })).rejects.toMatchObject({ code: 63007 });
    expect(sandbox.messages.length).toBe(before);
  });
});

describe("SendGrid mail/send", () => {
  it("sends an email through @sendgrid/mail: 202 with X-Message-Id", async () => {
    const mailer = createSendGridMailer(SENDGRID_KEY, url);
    const [response] = await mailer.send({ to: "ada@example.com", from: "clinic@example.com", subject: "Reminder", text: "See you at 3pm" });
    expect(response.statusCode).toBe(202);
    const messageId = response.headers["x-message-id"];
    expect(messageId).toMatch(/^[\w-]{16,}$/);
    expect(sandbox.messages.at(-1)).toMatchObject({ id: messageId, provider: "sendgrid", account: "…mnop", channel: "email", to: "ada@example.com", subject: "Reminder" });
  });

  it("answers like SendGrid: 401 for a wrong key, 400 naming the field for a bad recipient", async () => {
    const before = sandbox.messages.length;
    await expect(
      createSendGridMailer("SG.wrong", url).send({ to: "ada@example.com", from: "clinic@example.com", subject: "x", text: "x" }),
    ).rejects.toMatchObject({ code: 401 });
    const error = await createSendGridMailer(SENDGRID_KEY, url)
      .send({ to: "not-an-address", from: "clinic@example.com", subject: "x", text: "x" })
      .catch((e: { code: number; response: { body: { errors: { field: string }[] } } }) => e);
    expect(error).toMatchObject({ code: 400 });
    expect((error as { response: { body: { errors: { field: string }[] } } }).response.body.errors[0]!.field).toBe("personalizations.0.to.0.email");
    expect(sandbox.messages.length).toBe(before);
  });
});

describe("the /sandbox page", () => {
  it("lists what was sent, newest first, with HTML escaped", async () => {
    await createTwilioClient(ACCOUNT, url).messages.create({ to: "+14155550124", from: "+14155550100", body: "<script>alert(1)</script>" });
    const page = await (await fetch(url)).text();
    expect(page).toContain("&lt;script&gt;alert(1)&lt;/script&gt;");
    expect(page).not.toContain("<script>alert(1)</script>");
    expect(page.indexOf("+14155550124")).toBeLessThan(page.indexOf("ada@example.com"));
  });
});
