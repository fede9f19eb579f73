import http from "node:http";
import express from "express";

/**
 * The baseline of `npm run bench -- webhooks`, in a process of its own (as
 * Herald's API is, src/api/standalone.ts): an express app that parses the same
 * form body and answers the same empty TwiML (or, for status callbacks, the
 * same 204), touching nothing. Tells the
 * parent its port over IPC, then serves until told to stop.
 */

const app = express();
app.disable("x-powered-by");
app.post("/webhooks/twilio/sms", express.urlencoded({ extended: false, limit: "64kb" }), (_req, res) => {
  res.type("text/xml").send('<?xml version="1.0" encoding="UTF-8"?><Response/>');
});
// The status callback's counterpart: the same form, answered 204.
app.post("/webhooks/twilio/status", express.urlencoded({ extended: false, limit: "64kb" }), (_req, res) => {
  res.status(204).end();
});
const server = http.createServer(app);
await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
process.send!({ port: (server.address() as { port: number }).port });
process.on("SIGTERM", () => process.exit(0));
// Gone with its parent, however the parent ended.
process.on("disconnect", () => process.exit(0));
