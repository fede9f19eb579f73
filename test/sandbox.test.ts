import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import express from "express";
import twilio from "twilio";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createSendGridMailer } from "../src/providers/sendgrid.ts";
import { createTwilioClient } from "../src/providers/twilio.ts";
import { persistentEventKeys } from "../src/sandbox/event-key.ts";
import { createSandbox, type Sandbox } from "../src/sandbox/sandbox.ts";

/** The real twilio and @sendgrid/mail SDKs against the sandbox over HTTP: nothing mocked below the SDK. */

const ACCOUNT = { accountSid: `AC${"1".repeat(32)}`, authToken: "sandbox-token-1" };
const SENDGRID_KEY = "SG.sandbox-key-one.abcdefghijklmnop";
let sandbox: Sandbox;
let server: http.Server;
let url: string;
/** What Herald's webhooks would receive: raw bodies and headers, as posted. */
const received: { path: string; headers: http.IncomingHttpHeaders; body: string }[] = [];
let receiverUrl: string;

const require = createRequire(import.meta.url);
const { EventWebhook } = require("@sendgrid/eventwebhook") as {
  EventWebhook: new () => {
    convertPublicKeyToECDSA(key: string): unknown;
    verifySignature(key: unknown, payload: string, signature: string, timestamp: string): boolean;
  };
};

beforeAll(async () => {
  const receiver = express();
  receiver.use(express.text({ type: "*/*" }));
  receiver.post("/hooks/:kind", (req, res) => {
    received.push({ path: req.path, headers: req.headers, body: req.body as string });
    res.status(204).end();
  });
  const receiverServer = http.createServer(receiver);
  await new Promise<void>((resolve) => receiverServer.listen(0, "127.0.0.1", resolve));
  receiverUrl = `http://127.0.0.1:${(receiverServer.address() as { port: number }).port}/hooks`;
  afterAll(() => new Promise((resolve) => receiverServer.close(resolve)));

  sandbox = createSandbox({
    sendgridEventUrl: `${receiverUrl}/sendgrid`,
    callbackDelayMs: 5,
    describeAccount: async (provider, account) =>
      provider === "twilio" && account === ACCOUNT.accountSid ? "tenant acme-clinic" : undefined,
  });
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
    const sms = await client.messages.create({
      to: "+14155550123",
      from: "+14155550100",
      body: "Your appointment is at 3pm",
    });
    expect(sms.sid).toMatch(/^SM[0-9a-f]{32}$/);
    expect(sms.status).toBe("queued");
    expect(sms.accountSid).toBe(ACCOUNT.accountSid);
    const whatsapp = await client.messages.create({
      to: "whatsapp:+14155550123",
      from: "whatsapp:+14155550100",
      body: "Hola",
    });
    expect(whatsapp.to).toBe("whatsapp:+14155550123");
    expect(sandbox.messages.slice(-2).map((m) => [m.id, m.channel, m.to, m.body])).toEqual([
      [sms.sid, "sms", "+14155550123", "Your appointment is at 3pm"],
      [whatsapp.sid, "whatsapp", "whatsapp:+14155550123", "Hola"],
    ]);
  });

  it("answers like Twilio: 20003 for a wrong token, 21211 for an invalid To, and stores nothing", async () => {
    const before = sandbox.messages.length;
    const wrong = createTwilioClient({ ...ACCOUNT, authToken: "not-the-token" }, url);
    await expect(wrong.messages.create({ to: "+14155550123", from: "+14155550100", body: "x" })).rejects.toMatchObject({
      status: 401,
      code: 20003,
    });
    const client = createTwilioClient(ACCOUNT, url);
    await expect(client.messages.create({ to: "12345", from: "+14155550100", body: "x" })).rejects.toMatchObject({
      status: 400,
      code: 21211,
      moreInfo: "https://www.twilio.com/docs/errors/21211",
    });
    await expect(
      client.messages.create({ to: "whatsapp:+14155550123", from: "+14155550100", body: "x" }),
    ).rejects.toMatchObject({ code: 63007 });
    await expect(client.messages.create({ to: "+14155550003", from: "+14155550100", body: "x" })).rejects.toMatchObject(
      { status: 400, code: 21610 },
    );
    expect(sandbox.messages.length).toBe(before);
  });
});

describe("SendGrid mail/send", () => {
  it("sends an email through @sendgrid/mail: 202 with X-Message-Id", async () => {
    const mailer = createSendGridMailer(SENDGRID_KEY, url);
    const [response] = await mailer.send({
      to: "ada@example.com",
      from: "clinic@example.com",
      subject: "Reminder",
      text: "See you at 3pm",
    });
    expect(response.statusCode).toBe(202);
    const messageId = response.headers["x-message-id"];
    expect(messageId).toMatch(/^[\w-]{16,}$/);
    expect(sandbox.messages.at(-1)).toMatchObject({
      id: messageId,
      provider: "sendgrid",
      account: "…mnop",
      channel: "email",
      to: "ada@example.com",
      subject: "Reminder",
    });
  });

  it("answers like SendGrid: 401 for a wrong key, 400 naming the field for a bad recipient", async () => {
    const before = sandbox.messages.length;
    await expect(
      createSendGridMailer("SG.wrong", url).send({
        to: "ada@example.com",
        from: "clinic@example.com",
        subject: "x",
        text: "x",
      }),
    ).rejects.toMatchObject({ code: 401 });
    const error = await createSendGridMailer(SENDGRID_KEY, url)
      .send({ to: "not-an-address", from: "clinic@example.com", subject: "x", text: "x" })
      .catch((e: { code: number; response: { body: { errors: { field: string }[] } } }) => e);
    expect(error).toMatchObject({ code: 400 });
    expect((error as { response: { body: { errors: { field: string }[] } } }).response.body.errors[0]!.field).toBe(
      "personalizations.0.to.0.email",
    );
    expect(sandbox.messages.length).toBe(before);
  });
});

describe("callbacks, as the real services send them", () => {
  it("Twilio status callbacks (sent → delivered, or failed with its code) verify with twilio.validateRequest; a tampered one does not", async () => {
    await sandbox.settled(); // earlier tests' events must not mix in
    received.length = 0;
    const client = createTwilioClient(ACCOUNT, url);
    const statusCallback = `${receiverUrl}/twilio`;
    const ok = await client.messages.create({ to: "+14155550150", from: "+14155550100", body: "x", statusCallback });
    const bad = await client.messages.create({ to: "+14155550001", from: "+14155550100", body: "x", statusCallback });
    await sandbox.settled();
    const callbacks = received
      .filter((r) => r.path.endsWith("/twilio"))
      .map((r) => ({ ...r, params: Object.fromEntries(new URLSearchParams(r.body)) }));
    expect(callbacks).toHaveLength(4);
    const statuses = (sid: string) =>
      callbacks.filter((c) => c.params.MessageSid === sid).map((c) => [c.params.MessageStatus, c.params.ErrorCode]);
    expect(statuses(ok.sid)).toEqual([
      ["sent", undefined],
      ["delivered", undefined],
    ]);
    expect(statuses(bad.sid)).toEqual([
      ["sent", undefined],
      ["failed", "30003"],
    ]);
    for (const c of callbacks) {
      expect(
        twilio.validateRequest(ACCOUNT.authToken, String(c.headers["x-twilio-signature"]), statusCallback, c.params),
      ).toBe(true);
      expect(
        twilio.validateRequest(ACCOUNT.authToken, String(c.headers["x-twilio-signature"]), statusCallback, {
          ...c.params,
          MessageStatus: "read",
        }),
      ).toBe(false);
      expect(
        twilio.validateRequest("another-token", String(c.headers["x-twilio-signature"]), statusCallback, c.params),
      ).toBe(false);
    }
  });

  it("SendGrid events (processed, then delivered or bounce) verify with @sendgrid/eventwebhook over the raw body; a tampered one does not", async () => {
    await sandbox.settled();
    received.length = 0;
    await createSendGridMailer(SENDGRID_KEY, url).send(
      { to: ["ada@example.com", "bounce@example.com"], from: "clinic@example.com", subject: "x", text: "x" },
      true,
    );
    await sandbox.settled();
    const verifier = new EventWebhook();
    const key = verifier.convertPublicKeyToECDSA(sandbox.sendgridPublicKey);
    const events = received.flatMap(
      (r) => JSON.parse(r.body) as { email: string; event: string; sg_event_id: string }[],
    );
    expect(events.map((e) => [e.email, e.event]).sort()).toEqual([
      ["ada@example.com", "delivered"],
      ["ada@example.com", "processed"],
      ["bounce@example.com", "bounce"],
      ["bounce@example.com", "processed"],
    ]);
    expect(new Set(events.map((e) => e.sg_event_id)).size).toBe(4);
    for (const r of received) {
      const signature = String(r.headers["x-twilio-email-event-webhook-signature"]);
      const timestamp = String(r.headers["x-twilio-email-event-webhook-timestamp"]);
      expect(verifier.verifySignature(key, r.body, signature, timestamp)).toBe(true);
      expect(
        verifier.verifySignature(
          key,
          r.body.replace("delivered", "dropped").replace("processed", "dropped"),
          signature,
          timestamp,
        ),
      ).toBe(false);
      // Re-serialised JSON is not the signed bytes either.
      expect(verifier.verifySignature(key, JSON.stringify(JSON.parse(r.body), null, 1), signature, timestamp)).toBe(
        false,
      );
    }
  });
});

describe("fault injection", () => {
  afterAll(() => sandbox.setFaults({}));

  it("429 bursts and errors reach the SDKs as the real services' errors, storing nothing", async () => {
    const before = sandbox.messages.length;
    sandbox.setFaults({ rateLimitBurst: 2 });
    const client = createTwilioClient(ACCOUNT, url);
    await expect(client.messages.create({ to: "+14155550151", from: "+14155550100", body: "x" })).rejects.toMatchObject(
      { status: 429, code: 20429 },
    );
    await expect(
      createSendGridMailer(SENDGRID_KEY, url).send({
        to: "ada@example.com",
        from: "clinic@example.com",
        subject: "x",
        text: "x",
      }),
    ).rejects.toMatchObject({ code: 429 });
    await expect(
      client.messages.create({ to: "+14155550151", from: "+14155550100", body: "x" }),
    ).resolves.toMatchObject({ status: "queued" });
    sandbox.setFaults({ errorRate: 1 });
    await expect(client.messages.create({ to: "+14155550151", from: "+14155550100", body: "x" })).rejects.toMatchObject(
      { status: 500 },
    );
    expect(sandbox.messages.length).toBe(before + 1);
  });

  it("latency delays the answer; accept-then-timeout stores the message but never answers", async () => {
    sandbox.setFaults({ latencyMs: 150 });
    const started = Date.now();
    await createTwilioClient(ACCOUNT, url).messages.create({ to: "+14155550152", from: "+14155550100", body: "slow" });
    expect(Date.now() - started).toBeGreaterThanOrEqual(150);
    sandbox.setFaults({ acceptThenTimeoutMs: 2000 });
    const auth = Buffer.from(`${ACCOUNT.accountSid}:${ACCOUNT.authToken}`).toString("base64");
    const attempt = fetch(`${url}/twilio/2010-04-01/Accounts/${ACCOUNT.accountSid}/Messages.json`, {
      method: "POST",
      headers: { authorization: `Basic ${auth}`, "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ To: "+14155550153", From: "+14155550100", Body: "lost answer" }).toString(),
      signal: AbortSignal.timeout(300),
    });
    await expect(attempt).rejects.toThrow();
    // Accepted all the same: a retry would send it twice, which is why Herald must not retry blindly.
    expect(sandbox.messages.at(-1)).toMatchObject({ to: "+14155550153", body: "lost answer" });
  });
});

describe("the /sandbox page", () => {
  it("lists what was sent by the account that sent it, newest first, with HTML escaped", async () => {
    await createTwilioClient(ACCOUNT, url).messages.create({
      to: "+14155550124",
      from: "+14155550100",
      body: "<script>alert(1)</script>",
    });
    const page = await (await fetch(url)).text();
    expect(page).toContain("&lt;script&gt;alert(1)&lt;/script&gt;");
    expect(page).not.toContain("<script>alert(1)</script>");
    expect(page.indexOf("+14155550124")).toBeLessThan(page.indexOf("ada@example.com"));
    expect(page).toContain("<h2>Twilio account of tenant acme-clinic</h2>");
    expect(page).toContain("<h2>SendGrid account …mnop (no tenant has it)</h2>");
  });
});

describe("the SendGrid event key", () => {
  it("is kept in a 0600 file and the same after a restart, so events can be signed by hand", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "herald-event-key-"));
    try {
      const file = path.join(dir, "sandbox-sendgrid-event-key.pem");
      const first = createSandbox({ page: false, eventKeys: persistentEventKeys(file) });
      expect(fs.statSync(file).mode & 0o777).toBe(0o600);
      const restarted = createSandbox({ page: false, eventKeys: persistentEventKeys(file) });
      expect(restarted.sendgridPublicKey).toBe(first.sendgridPublicKey);
      // Signed with the file's private key (as by hand), verified with the sandbox's public key.
      const body = JSON.stringify([{ event: "delivered" }]);
      const signature = crypto.sign("sha256", Buffer.from("1700000000" + body), fs.readFileSync(file, "utf8"));
      const verifier = new EventWebhook();
      expect(
        verifier.verifySignature(
          verifier.convertPublicKeyToECDSA(restarted.sendgridPublicKey),
          body,
          signature.toString("base64"),
          "1700000000",
        ),
      ).toBe(true);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
