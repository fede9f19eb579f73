import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../src/config.ts";
import { createLogger } from "../src/logger.ts";
import { ProviderClients, systemProviders } from "../src/providers/clients.ts";
import { startWorker, type WorkerHandle } from "../src/worker/worker.ts";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import { testKeyring } from "./helpers/keys.ts";
import { startSandboxServer, waitFor, type SandboxServer } from "./helpers/messaging.ts";
import { textIn, webhookEnv } from "./helpers/webhooks.ts";

/**
 * Number work through the API (issue 14, items 2–4): sync an account's
 * numbers and import the picked ones, search and buy (one number for one
 * idempotency key, however often the mutation is retried), release, and
 * point a number's webhooks at Herald — each a number request carried out by
 * a real worker (number_requests__run) through the Twilio SDK against the
 * sandbox, and audited.
 */

const PUBLIC = "https://herald.example.test";
const db = useTestDatabase();
const api = useApiServer(db, { env: () => webhookEnv({ publicUrl: PUBLIC }) });
let server: SandboxServer;
let worker: WorkerHandle;
let a: TenantFixture;
let b: TenantFixture;
let sidA = "";
const tokens = { a: "", b: "", aMember: "" };

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  server = await startSandboxServer();
  const { rows } = await db.current.root.query(
    "select twilio_account_sid from herald_public.provider_accounts where id = $1",
    [a.providerAccountId],
  );
  sidA = rows[0].twilio_account_sid as string;
  server.sandbox.addTwilioAccount(sidA, a.providerSecret);
  // The worker knows Herald's public URL: that is where bought and configured numbers point.
  worker = await startWorker({
    ownerUrl: db.current.urls.owner,
    authenticatorUrl: db.current.urls.authenticator,
    concurrency: 4,
    keyring: testKeyring(),
    providers: new ProviderClients(
      systemProviders({ ...loadConfig(), twilio: undefined, sendgrid: undefined }, server.url, PUBLIC),
    ),
    logger: createLogger("silent", 2),
  });
  tokens.a = await tokenFor(api.current, a, "owner");
  tokens.b = await tokenFor(api.current, b, "owner");
  tokens.aMember = await tokenFor(api.current, a, "member");
});
afterAll(async () => {
  await worker?.stop();
  await server?.close();
});

interface NumberRequest {
  rowId: string;
  status: string;
  result: Record<string, unknown> | null;
  error: string | null;
}

/** Runs a mutation returning a number request, then waits for the worker to complete it. */
async function request(token: string, mutation: string, variables: Record<string, unknown>): Promise<NumberRequest> {
  const started = await graphql(api.current, token, mutation, variables);
  expect(started.body.errors).toBeUndefined();
  const field = Object.keys(started.body.data!)[0]!;
  const id = started.body.data![field].numberRequest.rowId as string;
  return waitFor(
    async () => {
      const { body } = await graphql(
        api.current,
        token,
        `query($id: UUID!) { numberRequestByTenantIdAndRowId(tenantId: "${token === tokens.b ? b.id : a.id}", rowId: $id) { rowId status result error } }`,
        { id },
      );
      const found = body.data?.numberRequestByTenantIdAndRowId as NumberRequest | undefined;
      return found && found.status !== "queued" ? found : undefined;
    },
    20_000,
    async () => {
      const { rows } = await db.current.root.query(
        "select task_identifier, attempts, last_error from graphile_worker.jobs where task_identifier = 'number_requests__run' and $1::text is not null",
        [id],
      );
      return `number request ${id} (job: ${JSON.stringify(rows)})`;
    },
  );
}

const SYNC = `mutation($acc: UUID!) { syncSenderNumbers(input: { providerAccountId: $acc }) { numberRequest { rowId } } }`;
const IMPORT = `mutation($r: UUID!, $n: [String]!) { importSenderNumbers(input: { requestId: $r, phoneNumbers: $n }) { numberRequest { rowId } } }`;
const SEARCH = `mutation($acc: UUID!, $area: String, $contains: String) {
  searchAvailableNumbers(input: { providerAccountId: $acc, country: "US", areaCode: $area, contains: $contains, mms: true }) { numberRequest { rowId } }
}`;
const BUY = `mutation($acc: UUID!, $n: String!, $key: String!) {
  buySenderNumber(input: { providerAccountId: $acc, phoneNumber: $n, idempotencyKey: $key }) { numberRequest { rowId } }
}`;
const RELEASE = `mutation($id: UUID!) { releaseSenderNumber(input: { senderNumberId: $id }) { numberRequest { rowId } } }`;
const CONFIGURE = `mutation($id: UUID!) { configureSenderNumberWebhooks(input: { senderNumberId: $id }) { numberRequest { rowId } } }`;

const numberRow = async (tenantId: string, phone: string) =>
  (
    await db.current.root.query(
      "select id, status, friendly_name, webhooks_elsewhere, sms_url, status_callback_url from herald_public.sender_numbers where tenant_id = $1 and phone_number = $2",
      [tenantId, phone],
    )
  ).rows[0];

describe("sync and import", () => {
  it("lists the account's numbers (capabilities, friendly name, webhooks elsewhere) and imports the picked ones, verified", async () => {
    const held = ["+14155550601", "+14155550602", "+14155550603"];
    for (const n of held) server.sandbox.numbers.assign(sidA, n).friendlyName = `Line ${n.slice(-2)}`;
    const sync = await request(tokens.a, SYNC, { acc: a.providerAccountId });
    expect(sync.status).toBe("done");
    const listed = sync.result!.numbers as {
      phoneNumber: string;
      friendlyName: string;
      capabilities: object;
      webhooksElsewhere: boolean;
    }[];
    expect(listed.map((n) => n.phoneNumber).sort()).toEqual(expect.arrayContaining(held));
    const first = listed.find((n) => n.phoneNumber === held[0])!;
    expect(first).toMatchObject({
      friendlyName: "Line 01",
      capabilities: { sms: true, mms: true },
      webhooksElsewhere: true,
    });

    // Import two (and one the account does not hold: not added).
    const imported = await request(tokens.a, IMPORT, { r: sync.rowId, n: [held[0], held[1], "+14155550699"] });
    expect(imported.status).toBe("done");
    expect(imported.result!.notListed).toEqual(["+14155550699"]);
    expect((imported.result!.senderNumberIds as string[]).length).toBe(2);
    for (const n of [held[0]!, held[1]!]) {
      expect(await numberRow(a.id, n)).toMatchObject({ status: "verified", webhooks_elsewhere: true });
    }
    expect(await numberRow(a.id, held[2]!)).toBeUndefined();
    expect(await numberRow(a.id, "+14155550699")).toBeUndefined();
    // The report of numbers whose webhooks point elsewhere.
    const report = await graphql(
      api.current,
      tokens.a,
      `
        {
          allSenderNumbers {
            nodes {
              phoneNumber
              webhooksElsewhere
            }
          }
        }
      `,
    );
    expect(report.body.errors).toBeUndefined();
    const elsewhere = (
      report.body.data!.allSenderNumbers.nodes as { phoneNumber: string; webhooksElsewhere: boolean }[]
    )
      .filter((n) => n.webhooksElsewhere)
      .map((n) => n.phoneNumber);
    expect(elsewhere.sort()).toEqual([held[0], held[1]]);
  });
});

describe("search, buy and release", () => {
  it("searches plausible numbers, buys one once for one idempotency key, points it at Herald; releases it", async () => {
    const search = await request(tokens.a, SEARCH, { acc: a.providerAccountId, area: "628", contains: "55501*7" });
    expect(search.status).toBe("done");
    const offered = search.result!.numbers as { phoneNumber: string; capabilities: object }[];
    expect(offered.length).toBeGreaterThan(0);
    // Twilio's Contains: * is any one digit.
    for (const n of offered) expect(n.phoneNumber).toMatch(/^\+1628\d*55501\d7\d*$/);
    const pick = offered[0]!.phoneNumber;

    // The same mutation three times (a client retrying): one request, one number bought.
    const key = "buy-first-line";
    const attempts = await Promise.all(
      [0, 1, 2].map(() => graphql(api.current, tokens.a, BUY, { acc: a.providerAccountId, n: pick, key })),
    );
    const ids = new Set(attempts.map((r) => r.body.data?.buySenderNumber.numberRequest.rowId));
    expect(ids.size).toBe(1);
    const bought = await request(tokens.a, BUY, { acc: a.providerAccountId, n: pick, key });
    expect(bought.status).toBe("done");
    expect(server.sandbox.numbers.list().filter((n) => n.phoneNumber === pick)).toHaveLength(1);
    expect(server.sandbox.numbers.holderOf(pick)).toBe(sidA);
    const row = await numberRow(a.id, pick);
    expect(row).toMatchObject({
      status: "verified",
      webhooks_elsewhere: false,
      sms_url: `${PUBLIC}/webhooks/twilio/sms`,
      status_callback_url: `${PUBLIC}/webhooks/twilio/status`,
    });
    expect(bought.result!.senderNumberId).toBe(row.id);
    // The key belongs to this purchase: another number under it is refused, naming the field.
    const reused = await graphql(api.current, tokens.a, BUY, {
      acc: a.providerAccountId,
      n: offered[1]!.phoneNumber,
      key,
    });
    expect(reused.body.errors?.[0]?.extensions).toMatchObject({ field: "idempotencyKey" });
    // Texts to it reach A at once.
    expect((await textIn(api.current, a, { from: "+16285550101", body: "hi", to: pick })).status).toBe(200);

    // Bought and released by owners only, each step in the audit log.
    const memberBuy = await graphql(api.current, tokens.aMember, BUY, { acc: a.providerAccountId, n: pick, key: "m" });
    expect(memberBuy.body.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
    const released = await request(tokens.a, RELEASE, { id: row.id });
    expect(released.status).toBe("done");
    expect(await numberRow(a.id, pick)).toBeUndefined();
    expect(server.sandbox.numbers.holderOf(pick)).not.toBe(sidA);
    expect((await textIn(api.current, a, { from: "+16285550101", body: "hi", to: pick })).status).toBe(404);
    const { rows: audit } = await db.current.root.query(
      `select table_name, action, actor_kind from herald_public.audit_log
        where tenant_id = $1 and table_name in ('number_requests', 'sender_numbers') and record_id = any ($2)
        order by id`,
      [a.id, [row.id, bought.rowId, released.rowId]],
    );
    expect(audit.map((r) => `${r.table_name}:${r.action}:${r.actor_kind}`)).toEqual(
      expect.arrayContaining([
        "number_requests:insert:user",
        "sender_numbers:insert:worker",
        "sender_numbers:delete:worker",
        "number_requests:update:worker",
      ]),
    );
  });

  it("a job run again after the provider's purchase (a crash before the commit) adopts it instead of buying again", async () => {
    // What the first run left behind: the account holds the number at the provider, Herald has no row yet.
    const n = "+14155550155";
    server.sandbox.numbers.assign(sidA, n);
    const retried = await request(tokens.a, BUY, { acc: a.providerAccountId, n, key: "crashed-once" });
    expect(retried.status).toBe("done");
    expect(server.sandbox.numbers.list().filter((x) => x.phoneNumber === n)).toHaveLength(1);
    expect(await numberRow(a.id, n)).toMatchObject({ status: "verified" });
  });

  it("a number the provider already sold is not bought again: the request fails with the provider's words", async () => {
    server.sandbox.numbers.assign(`AC${"7".repeat(32)}`, "+14155550177");
    const taken = await request(tokens.a, BUY, { acc: a.providerAccountId, n: "+14155550177", key: "taken" });
    expect(taken.status).toBe("failed");
    expect(taken.error).toMatch(/not available/);
    expect(await numberRow(a.id, "+14155550177")).toBeUndefined();
  });
});

describe("webhook set-up", () => {
  it("points a number's SmsUrl and StatusCallback at Herald's public URL", async () => {
    const n = "+14155550701";
    const held = server.sandbox.numbers.assign(sidA, n);
    held.smsUrl = "https://old-crm.example.test/sms";
    const sync = await request(tokens.a, SYNC, { acc: a.providerAccountId });
    const imported = await request(tokens.a, IMPORT, { r: sync.rowId, n: [n] });
    const id = (imported.result!.senderNumberIds as string[])[0]!;
    expect(await numberRow(a.id, n)).toMatchObject({
      webhooks_elsewhere: true,
      sms_url: "https://old-crm.example.test/sms",
    });
    const configured = await request(tokens.a, CONFIGURE, { id });
    expect(configured.status).toBe("done");
    expect(held.smsUrl).toBe(`${PUBLIC}/webhooks/twilio/sms`);
    expect(held.statusCallback).toBe(`${PUBLIC}/webhooks/twilio/status`);
    expect(await numberRow(a.id, n)).toMatchObject({
      webhooks_elsewhere: false,
      sms_url: `${PUBLIC}/webhooks/twilio/sms`,
    });
    // B cannot configure A's number.
    const attack = await graphql(api.current, tokens.b, CONFIGURE, { id });
    expect(attack.body.errors?.[0]?.extensions?.code).toBe("NOT_FOUND");
  });
});
