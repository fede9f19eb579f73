import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROLES } from "../src/db/urls.ts";
import { queueStaleRechecks, verifySenderNumber } from "../src/numbers/verify.ts";
import { withWorkerSession } from "../src/worker/tenant-context.ts";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { asRole, expectPgError, useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import { testKeyring } from "./helpers/keys.ts";
import { asOwner, asRoot, startSandboxServer, type SandboxServer } from "./helpers/messaging.ts";
import { contactWith, textIn, webhookEnv } from "./helpers/webhooks.ts";

/**
 * Numbers a tenant provably owns (issue 14): a sender number is pending until
 * the provider, asked under the account's own credentials, confirms that the
 * account holds it. The squat replayed (A registers B's number first), a
 * number moving from A's account to B's, and B attacking A's numbers through
 * SQL and GraphQL. The provider is the sandbox (src/sandbox/numbers.ts),
 * asked through the real Twilio SDK by src/numbers/verify.ts — what the
 * sender_numbers__verify task runs.
 */

const db = useTestDatabase();
const api = useApiServer(db, { env: () => webhookEnv() });
let server: SandboxServer;
let a: TenantFixture;
let b: TenantFixture;
const sids = { a: "", b: "" };
const tokens = { a: "", b: "", bMember: "" };

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  server = await startSandboxServer();
  for (const [key, t] of [
    ["a", a],
    ["b", b],
  ] as const) {
    const { rows } = await db.current.root.query(
      "select twilio_account_sid from herald_public.provider_accounts where id = $1",
      [t.providerAccountId],
    );
    sids[key] = rows[0].twilio_account_sid as string;
    server.sandbox.addTwilioAccount(sids[key], t.providerSecret);
  }
  tokens.a = await tokenFor(api.current, a, "owner");
  tokens.b = await tokenFor(api.current, b, "owner");
  tokens.bMember = await tokenFor(api.current, b, "member");
});
afterAll(async () => {
  await server?.close();
});

/** The SQLSTATE a statement fails with (inside a savepoint), or undefined. */
const codeOf = async (c: pg.PoolClient, run: () => Promise<unknown>) => (await expectPgError(c, run))?.code;

/** What the verification task does for one of the tenant's numbers, against this file's sandbox. */
const verify = (t: TenantFixture, numberId: string) =>
  withWorkerSession(db.current.authenticator, testKeyring(), t.id, (c) =>
    verifySenderNumber(c, server.clients, numberId),
  );

const REGISTER = `mutation($n: String!, $acc: UUID!, $ch: String) {
  createSenderNumber(input: { senderNumber: { phoneNumber: $n, providerAccountId: $acc, channel: $ch } }) {
    senderNumber { rowId status failureReason }
  }
}`;

async function register(token: string, t: TenantFixture, number: string, channel = "sms") {
  const result = await graphql(api.current, token, REGISTER, { n: number, acc: t.providerAccountId, ch: channel });
  expect(result.body.errors).toBeUndefined();
  return result.body.data!.createSenderNumber.senderNumber as { rowId: string; status: string; failureReason: null };
}

const numberRow = async (id: string) =>
  (
    await db.current.root.query(
      "select status, failure_reason, verified_at from herald_public.sender_numbers where id = $1",
      [id],
    )
  ).rows[0] as { status: string; failure_reason: string | null; verified_at: Date | null };

const queuedCheck = async (numberId: string) =>
  (
    await db.current.root.query("select count(*)::int as n from graphile_worker.jobs where key = $1", [
      `sender_number_verify:${numberId}`,
    ])
  ).rows[0].n as number;

describe("the squat, replayed", () => {
  it("A's claim on B's number fails, B's succeeds, B's signed STOP is processed, and A learns nothing about B", async () => {
    const squatted = "+14155550300";
    const unheld = "+14155550301";
    server.sandbox.numbers.assign(sids.b, squatted);

    // A registers B's number first (and one nobody holds): accepted, pending, a check queued.
    const claim = await register(tokens.a, a, squatted);
    const control = await register(tokens.a, a, unheld);
    expect(claim.status).toBe("pending");
    expect(await queuedCheck(claim.rowId)).toBe(1);
    // Pending routes nothing: a text to the number finds no tenant yet.
    expect((await textIn(api.current, a, { from: "+16285550001", body: "hi", to: squatted })).status).toBe(404);

    // The provider does not list it on A's account: failed.
    expect(await verify(a, claim.rowId)).toBe("failed");
    expect(await verify(a, control.rowId)).toBe("failed");
    const failed = await numberRow(claim.rowId);
    expect(failed.status).toBe("failed");
    // A's reason is about A's own account, word for word the one for a number nobody holds.
    expect(failed.failure_reason).toBe((await numberRow(control.rowId)).failure_reason);
    expect(failed.failure_reason).not.toMatch(/tenant|another|registered/i);

    // B registers its own number: no CONFLICT (A's failed claim blocks nothing), then verified.
    const owned = await register(tokens.b, b, squatted);
    expect(owned.status).toBe("pending");
    expect(await verify(b, owned.rowId)).toBe("verified");

    // B's contact texts STOP to B's number, signed by B's account: processed for B.
    const phone = "+16285550002";
    const contactId = await contactWith(db.current, b, phone);
    const stop = await textIn(api.current, b, { from: phone, body: "STOP", to: squatted });
    expect(stop.status).toBe(200);
    const { rows: consent } = await db.current.root.query(
      "select c.sms_subscribed, (select count(*)::int from herald_public.consent_events e where e.tenant_id = c.tenant_id and e.contact_id = c.id and e.action = 'opt_out') as opt_outs from herald_public.contacts c where c.id = $1",
      [contactId],
    );
    expect(consent[0]).toEqual({ sms_subscribed: false, opt_outs: 1 });
    // Signed by A's account instead: refused, nothing stored for A.
    const forged = await textIn(api.current, a, { from: phone, body: "STOP", to: squatted });
    expect(forged.status).toBe(403);
    const { rows: aInbound } = await db.current.root.query(
      "select count(*)::int as n from herald_public.inbound_messages where tenant_id = $1 and to_number = $2",
      [a.id, squatted],
    );
    expect(aInbound[0].n).toBe(0);

    // A asks again: still failed, same words; A's view holds only its own rows.
    const again = await graphql(
      api.current,
      tokens.a,
      `
        mutation ($id: UUID!) {
          verifySenderNumber(input: { senderNumberId: $id }) {
            senderNumber {
              status
            }
          }
        }
      `,
      { id: claim.rowId },
    );
    expect(again.body.errors).toBeUndefined();
    expect(await verify(a, claim.rowId)).toBe("failed");
    expect((await numberRow(claim.rowId)).failure_reason).toBe(failed.failure_reason);
    const seen = await graphql(
      api.current,
      tokens.a,
      `{ allSenderNumbers(condition: { phoneNumber: "${squatted}" }) { nodes { tenantId status } } }`,
    );
    expect(seen.body.data!.allSenderNumbers.nodes).toEqual([{ tenantId: a.id, status: "failed" }]);
    // A registering it once more is A's own duplicate (its own row), not a sign of B.
    const twice = await graphql(api.current, tokens.a, REGISTER, { n: squatted, acc: a.providerAccountId, ch: "sms" });
    expect(twice.body.errors?.[0]?.extensions?.code).toBe("CONFLICT");
    const otherChannel = await graphql(api.current, tokens.a, REGISTER, {
      n: squatted,
      acc: a.providerAccountId,
      ch: "whatsapp",
    });
    expect(otherChannel.body.errors).toBeUndefined();
  });

  it("a WhatsApp sender is proven by the account's WhatsApp senders, not by its SMS numbers", async () => {
    const number = "+14155550310";
    server.sandbox.numbers.assign(sids.b, number, "sms");
    const onlySms = await register(tokens.b, b, number, "whatsapp");
    expect(await verify(b, onlySms.rowId)).toBe("failed");
    expect((await numberRow(onlySms.rowId)).failure_reason).toMatch(/WhatsApp sender/);
    server.sandbox.numbers.assign(sids.b, number, "whatsapp");
    expect(await verify(b, onlySms.rowId)).toBe("verified");
  });

  it("a refused credential leaves the status as it was (only the provider's 'not on this account' fails a number)", async () => {
    const number = "+14155550320";
    server.sandbox.numbers.assign(sids.b, number);
    const claim = await register(tokens.b, b, number);
    server.sandbox.addTwilioAccount(sids.b, "rotated-elsewhere");
    try {
      expect(await verify(b, claim.rowId)).toBe("pending");
      expect((await numberRow(claim.rowId)).failure_reason).toMatch(/refused/);
    } finally {
      server.sandbox.addTwilioAccount(sids.b, b.providerSecret);
    }
    expect(await verify(b, claim.rowId)).toBe("verified");
  });
});

describe("a number moved from A's account to B's", () => {
  it("routes to A while A holds it; after A's re-check fails, B's verification routes it to B", async () => {
    const moving = "+14155550400";
    server.sandbox.numbers.assign(sids.a, moving);
    const aClaim = await register(tokens.a, a, moving);
    expect(await verify(a, aClaim.rowId)).toBe("verified");
    expect((await textIn(api.current, a, { from: "+16285550010", body: "hello A", to: moving })).status).toBe(200);

    // The number moves at the provider. B registers it: the provider confirms B, but A's
    // verified claim still routes it, so B waits and A's claim is queued for a re-check.
    server.sandbox.numbers.assign(sids.b, moving);
    const bClaim = await register(tokens.b, b, moving);
    await asRoot(db.current, (c) =>
      c.query("select graphile_worker.remove_job($1)", [`sender_number_verify:${aClaim.rowId}`]),
    );
    expect(await verify(b, bClaim.rowId)).toBe("contested");
    expect((await numberRow(bClaim.rowId)).status).toBe("pending");
    expect((await numberRow(bClaim.rowId)).failure_reason).not.toMatch(/tenant/i);
    expect(await queuedCheck(aClaim.rowId)).toBe(1);
    expect((await textIn(api.current, a, { from: "+16285550011", body: "still A", to: moving })).status).toBe(200);

    // A's re-check (the queued job): the number left A's account. B's claim is queued next.
    await asRoot(db.current, (c) =>
      c.query("select graphile_worker.remove_job($1)", [`sender_number_verify:${bClaim.rowId}`]),
    );
    expect(await verify(a, aClaim.rowId)).toBe("failed");
    expect(await queuedCheck(bClaim.rowId)).toBe(1);
    expect(await verify(b, bClaim.rowId)).toBe("verified");

    // Texts now belong to B, signed by B's account; A's signature no longer counts. (The
    // webhook's cached owner is looked up again when a signature fails, at most once a second.)
    await new Promise((resolve) => setTimeout(resolve, 1100));
    const phone = "+16285550012";
    expect((await textIn(api.current, b, { from: phone, body: "hello B", to: moving })).status).toBe(200);
    expect((await textIn(api.current, a, { from: phone, body: "to A?", to: moving })).status).toBe(403);
    const { rows } = await db.current.root.query(
      "select tenant_id, count(*)::int as n from herald_public.inbound_messages where to_number = $1 group by tenant_id order by n",
      [moving],
    );
    expect(rows).toEqual(
      expect.arrayContaining([
        { tenant_id: a.id, n: 2 },
        { tenant_id: b.id, n: 1 },
      ]),
    );
    // And only B may send from it now.
    const send = (token: string) =>
      graphql(
        api.current,
        token,
        `mutation($c: UUID!) { sendMessage(input: { channel: "sms", body: "hi", contactIds: [$c], metadata: { from: "${moving}" } }) { message { rowId } } }`,
        { c: contactIdOf.a },
      );
    const contactIdOf = { a: a.contactId };
    expect((await send(tokens.a)).body.errors?.[0]?.extensions?.code).toBe("NOT_OWN_SENDER");
  });
});

describe("re-checks", () => {
  it("a verified number unconfirmed for a day is checked again, and stops routing once it left the account", async () => {
    const number = "+14155550450";
    server.sandbox.numbers.assign(sids.b, number);
    const claim = await register(tokens.b, b, number);
    expect(await verify(b, claim.rowId)).toBe("verified");
    await asRoot(db.current, (c) =>
      c.query("update herald_public.sender_numbers set last_checked_at = now() - interval '25 hours' where id = $1", [
        claim.rowId,
      ]),
    );
    // The hourly task, as an operator session: the stale number's re-check is queued in B's tenant.
    const queued = await asRoot(db.current, async (c) => {
      await c.query("set local role herald_admin");
      return queueStaleRechecks(c);
    });
    expect(queued).toBeGreaterThanOrEqual(1);
    expect(await queuedCheck(claim.rowId)).toBe(1);
    // Released at Twilio outside Herald: the re-check fails it, and texts find no tenant.
    server.sandbox.numbers.release(number);
    expect(await verify(b, claim.rowId)).toBe("failed");
    expect((await textIn(api.current, b, { from: "+16285550020", body: "hi", to: number })).status).toBe(404);
  });
});

describe("isolation: B against A's numbers", () => {
  it("B cannot see, verify, release or send from A's numbers through GraphQL", async () => {
    const seen = await graphql(
      api.current,
      tokens.b,
      `
        {
          allSenderNumbers {
            nodes {
              tenantId
              phoneNumber
            }
          }
        }
      `,
    );
    expect(seen.body.data!.allSenderNumbers.nodes.every((n: { tenantId: string }) => n.tenantId === b.id)).toBe(true);
    const verifyA = await graphql(
      api.current,
      tokens.b,
      `
        mutation ($id: UUID!) {
          verifySenderNumber(input: { senderNumberId: $id }) {
            senderNumber {
              status
            }
          }
        }
      `,
      { id: a.senderNumberId },
    );
    expect(verifyA.body.errors?.[0]?.extensions?.code).toBe("NOT_FOUND");
    const releaseA = await graphql(
      api.current,
      tokens.b,
      `
        mutation ($id: UUID!) {
          releaseSenderNumber(input: { senderNumberId: $id }) {
            numberRequest {
              rowId
            }
          }
        }
      `,
      { id: a.senderNumberId },
    );
    expect(releaseA.body.errors?.[0]?.extensions?.code).toBe("NOT_FOUND");
    const syncA = await graphql(
      api.current,
      tokens.b,
      `
        mutation ($acc: UUID!) {
          syncSenderNumbers(input: { providerAccountId: $acc }) {
            numberRequest {
              rowId
            }
          }
        }
      `,
      { acc: a.providerAccountId },
    );
    expect(syncA.body.errors?.[0]?.extensions?.code).toBe("NOT_FOUND");
    const sendA = await graphql(
      api.current,
      tokens.b,
      `mutation($c: UUID!) { sendMessage(input: { channel: "sms", body: "spoof", contactIds: [$c], metadata: { from: "${a.senderNumber}" } }) { message { rowId } } }`,
      { c: b.contactId },
    );
    expect(sendA.body.errors?.[0]?.extensions?.code).toBe("NOT_OWN_SENDER");
    // A plain member of B may not manage numbers at all.
    const memberRelease = await graphql(
      api.current,
      tokens.bMember,
      `
        mutation ($id: UUID!) {
          releaseSenderNumber(input: { senderNumberId: $id }) {
            numberRequest {
              rowId
            }
          }
        }
      `,
      { id: b.senderNumberId },
    );
    expect(memberRelease.body.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
    const { rows } = await db.current.root.query(
      "select count(*)::int as n from herald_public.number_requests where kind in ('release', 'sync')",
    );
    expect(rows[0].n).toBe(0);
  });

  it("as SQL roles: B's member and worker cannot see, re-check, verify or remove A's numbers, nor vouch for one", async () => {
    const asB = { tenantId: b.id, userId: b.ownerId };
    for (const role of [ROLES.member, ROLES.worker] as const) {
      await asRole(db.current, { role, ...asB }, async (c) => {
        expect(
          (await c.query("select 1 from herald_public.sender_numbers where id = $1", [a.senderNumberId])).rows,
        ).toEqual([]);
      });
    }
    await asRole(db.current, { role: ROLES.member, ...asB }, async (c) => {
      const { rows } = await c.query(
        "update herald_public.sender_numbers set verify_requested_at = now() where id = $1 returning id",
        [a.senderNumberId],
      );
      expect(rows).toEqual([]);
      expect(await codeOf(c, () => c.query("select herald_public.verify_sender_number($1)", [a.senderNumberId]))).toBe(
        "NTFND",
      );
    });
    // Members cannot write a status, nor a provider's answer.
    await asRole(db.current, { role: ROLES.member, ...asB }, async (c) => {
      expect(
        await codeOf(c, () =>
          c.query(
            "insert into herald_public.sender_numbers (phone_number, provider_account_id, status) values ('+14155550500', $1, 'verified')",
            [b.providerAccountId],
          ),
        ),
      ).toBe("42501");
    });
    await asRole(db.current, { role: ROLES.member, ...asB }, async (c) => {
      expect(
        await codeOf(c, () =>
          c.query(
            "insert into herald_hidden.sender_number_checks (action, sender_number_id, owned) values ('check', $1, true)",
            [b.senderNumberId],
          ),
        ),
      ).toBe("42501");
    });
    // B's worker: not into A's tenant, not about A's number.
    await asRole(db.current, { role: ROLES.worker, ...asB }, async (c) => {
      expect(
        await codeOf(c, () =>
          c.query(
            "insert into herald_hidden.sender_number_checks (tenant_id, action, sender_number_id, owned) values ($1, 'check', $2, true)",
            [a.id, a.senderNumberId],
          ),
        ),
      ).toBe("42501");
    });
    await asRole(db.current, { role: ROLES.worker, ...asB }, async (c) => {
      expect(
        await codeOf(c, () =>
          c.query(
            "insert into herald_hidden.sender_number_checks (action, sender_number_id, owned) values ('check', $1, false)",
            [a.senderNumberId],
          ),
        ),
      ).toBe("NTFND");
      const { rows } = await c.query("delete from herald_public.sender_numbers where id = $1 returning id", [
        a.senderNumberId,
      ]);
      expect(rows).toEqual([]);
    });
    expect((await numberRow(a.senderNumberId)).status).toBe("verified");
  });

  it("an operator's assignment is pending too: no role inserts a verified number", async () => {
    await asRole(db.current, { role: ROLES.admin }, async (c) => {
      expect(
        await codeOf(c, () =>
          c.query(
            "insert into herald_public.sender_numbers (tenant_id, phone_number, status) values ($1, '+14155550501', 'verified')",
            [a.id],
          ),
        ),
      ).toBe("42501");
    });
    await asOwner(db.current, a, async (c) => {
      const { rows } = await c.query(
        "insert into herald_public.sender_numbers (phone_number, provider_account_id) values ('+14155550502', $1) returning status",
        [a.providerAccountId],
      );
      expect(rows[0].status).toBe("pending");
    });
  });
});
