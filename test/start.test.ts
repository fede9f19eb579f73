import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { findFreePort } from "../src/db/ports.ts";
import { projectRoot } from "../src/paths.ts";
import { graphql } from "./helpers/api.ts";
import { waitFor } from "./helpers/messaging.ts";

/**
 * `npm start` on a machine that has never run Herald: embedded PostgreSQL,
 * migrations, worker, API, demo tenants and their tokens, then a clean stop.
 */

const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "herald-start-"));
let child: ChildProcess | undefined;

afterAll(() => {
  child?.kill("SIGKILL");
  fs.rmSync(dataDir, { recursive: true, force: true });
});

/** Everything the child printed (stdout and stderr), kept for assertions and failure messages. */
let transcript = "";

/** Resolves with the transcript once `pattern` appears in it. */
function waitForOutput(proc: ChildProcess, pattern: RegExp, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`no ${pattern} within ${timeoutMs} ms:\n${transcript}`)),
      timeoutMs,
    );
    const onData = (chunk: Buffer) => {
      transcript += chunk.toString();
      if (pattern.test(transcript)) {
        clearTimeout(timer);
        resolve(transcript);
      }
    };
    proc.stdout!.on("data", onData);
    proc.stderr!.on("data", onData);
    proc.once("exit", (code) => reject(new Error(`exited with ${code} before ${pattern}:\n${transcript}`)));
  });
}

/** Well past vitest's default: the first start may take its 30 s, and the offline loop its 15 s more. */
const FIRST_START_TIMEOUT = 120_000;

describe("first start", () => {
  it(
    "prints the GraphiQL URL and a token per demo tenant within 30 s; each token sees only its tenant",
    async () => {
      // A port known in advance: the sandbox calls Herald back at its public URL, which names it.
      const freePort = await findFreePort();
      const started = Date.now();
      child = spawn(process.execPath, [path.join(projectRoot, "src/main.ts")], {
        env: {
          ...process.env,
          DATABASE_URL: "",
          HERALD_DATA_DIR: dataDir,
          PORT: String(freePort),
          LOG_LEVEL: "info",
          NODE_ENV: "",
        },
        stdio: ["ignore", "pipe", "pipe"],
      });
      const output = await waitForOutput(child, /Globex Events \(globex-events[^\n]*\n\s+\S+\n/, 30_000);
      expect(Date.now() - started).toBeLessThan(30_000);
      const port = Number(/Herald is running at http:\/\/localhost:(\d+)/.exec(output)?.[1]);
      expect(port).toBeGreaterThan(0);
      expect(output).toContain(`GraphiQL: http://localhost:${port}/graphiql`);

      // The demo tenants' send window is said up front: a text sent outside it waits (quiet hours).
      expect(output).toContain("Acme Clinic (acme-clinic, owner@acme-clinic.test; texts go out 08:00–21:00 UTC):");

      const herald = { url: `http://localhost:${port}` };
      const tokenAfter = (label: string) => new RegExp(`${label}[^\\n]*\\n\\s+(\\S+)`).exec(output)?.[1];
      for (const [label, slug] of [
        ["Acme Clinic", "acme-clinic"],
        ["Globex Events", "globex-events"],
      ] as const) {
        const token = tokenAfter(label);
        expect(token, label).toBeTruthy();
        const { body } = await graphql(herald, token, "{ allTenants { nodes { slug } } allUsers { nodes { email } } }");
        expect(body.data!.allTenants.nodes).toEqual([{ slug }]);
        expect(body.data!.allUsers.nodes).toEqual([{ email: `owner@${slug}.test` }]);
      }

      // The demo contacts are there, encrypted at rest and readable through the API.
      const acme = tokenAfter("Acme Clinic");
      const lookup = await graphql(
        herald,
        acme,
        `
          {
            contactByPhone(phone: "(415) 555-0101") {
              firstName
              email
              contactTags {
                nodes {
                  tag {
                    name
                  }
                }
              }
            }
          }
        `,
      );
      expect(lookup.body.data).toEqual({
        contactByPhone: {
          firstName: "Ada",
          email: "ada@example.com",
          contactTags: { nodes: [{ tag: { name: "vip" } }] },
        },
      });

      // No provider credentials: the banner says so and the sandbox page is served.
      expect(transcript).toMatch(/Sandbox: +http:\/\/localhost:\d+\/sandbox/);
      const sandboxPage = await fetch(`http://localhost:${port}/sandbox`);
      expect(await sandboxPage.text()).toContain("Herald sandbox");

      // The whole loop, offline: Ada texts HELP to Acme's number from the sandbox page, Herald
      // answers; a reply to her goes out through the worker and the sandbox reports it delivered.
      const textIn = await fetch(`http://localhost:${port}/sandbox/twilio/inbound`, {
        method: "POST",
        body: new URLSearchParams({ from: "+14155550101", to: "+14155550100", body: "HELP" }),
        redirect: "manual",
      });
      expect(textIn.status).toBe(303);
      expect(await (await fetch(`http://localhost:${port}/sandbox`)).text()).toContain(
        "Acme Clinic: account notifications.",
      );
      const ada = (
        await graphql(
          herald,
          acme,
          `
            {
              contactByPhone(phone: "+14155550101") {
                rowId
              }
            }
          `,
        )
      ).body.data!.contactByPhone.rowId;
      const reply = await graphql(
        herald,
        acme,
        `
          mutation ($c: UUID!) {
            replyToContact(input: { contactId: $c, body: "Call us any time." }) {
              message {
                rowId
              }
            }
          }
        `,
        { c: ada },
      );
      expect(reply.body.errors).toBeUndefined();
      expect(reply.body.data!.replyToContact.message.rowId).toBeTruthy();
      type Entry = { direction: string; body: string; status: string | null };
      const latest = async () =>
        (
          await graphql(
            herald,
            acme,
            `
              query ($c: UUID!) {
                allContacts(condition: { rowId: $c }) {
                  nodes {
                    conversation(first: 3) {
                      nodes {
                        direction
                        body
                        status
                      }
                    }
                  }
                }
              }
            `,
            { c: ada },
          )
        ).body.data!.allContacts.nodes[0].conversation.nodes as Entry[];
      // Until the sandbox reports the reply delivered.
      const thread = await waitFor(
        async () => {
          const entries = await latest();
          return entries[0]?.status === "delivered" && entries;
        },
        15_000,
        async () => `the reply to be delivered: ${JSON.stringify(await latest())}`,
      );
      expect(thread.map((e) => [e.direction, e.body.slice(0, 20), e.status])).toEqual([
        ["outbound", "Call us any time.", "delivered"],
        ["outbound", "Acme Clinic: account", "sent"],
        ["inbound", "HELP", null],
      ]);

      const health = await fetch(`http://localhost:${port}/healthz`);
      expect(health.status).toBe(200);
      // Development mode (embedded database, no NODE_ENV): GraphiQL is served.
      const graphiql = await fetch(`http://localhost:${port}/graphiql`);
      expect(graphiql.status).toBe(200);
      expect(await graphiql.text()).toMatch(/<html/i);

      // The secrets file holds keys: only its owner may read it.
      expect(fs.statSync(path.join(dataDir, "secrets.json")).mode & 0o777).toBe(0o600);

      const exitCode = await new Promise<number | null>((resolve) => {
        child!.once("exit", resolve);
        child!.kill("SIGTERM");
      });
      expect(exitCode, transcript.slice(-3000)).toBe(0);

      // The structured log lines never carry a secret: keys, the JWT secret, role passwords, tokens.
      const secrets = JSON.parse(fs.readFileSync(path.join(dataDir, "secrets.json"), "utf8")) as {
        jwtSecret: string;
        masterKey: string;
        hashKey: string;
        rolePasswords: Record<string, string>;
      };
      const logLines = transcript.split("\n").filter((line) => line.startsWith("{"));
      expect(logLines.length).toBeGreaterThan(3);
      const logs = logLines.join("\n");
      for (const secret of [
        secrets.jwtSecret,
        secrets.masterKey,
        secrets.hashKey,
        ...Object.values(secrets.rolePasswords),
      ]) {
        expect(logs).not.toContain(secret);
      }
      expect(logs).not.toMatch(/eyJhbGciOi|Bearer /);
      // PostgreSQL was stopped too, not left running.
      expect(fs.existsSync(path.join(dataDir, "postgres", "postmaster.pid"))).toBe(false);
    },
    FIRST_START_TIMEOUT,
  );
});
