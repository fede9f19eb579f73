import { beforeAll, describe, expect, it } from "vitest";
import { ROLES } from "../src/db/urls.ts";
import { graphql, tokenFor, useApiServer } from "./helpers/api.ts";
import { asRole, expectPgError, useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import { testKeyring } from "./helpers/keys.ts";

/** Provider accounts, sender numbers and email senders: write-only credentials, and tenant B attacking tenant A's. */

const db = useTestDatabase();
const api = useApiServer(db);
let a: TenantFixture;
let b: TenantFixture;
let ownerA: string;
let memberA: string;
let ownerB: string;

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
  ownerA = await tokenFor(api.current, a, "owner");
  memberA = await tokenFor(api.current, a, "member");
  ownerB = await tokenFor(api.current, b, "owner");
});

/** Every field of ProviderAccount whose type is a scalar or enum, as the schema says today. */
async function allProviderAccountFields(): Promise<string[]> {
  const { body } = await graphql(
    api.current,
    ownerA,
    `
      {
        __type(name: "ProviderAccount") {
          fields {
            name
            type {
              kind
              ofType {
                kind
              }
            }
          }
        }
      }
    `,
  );
  const fields = body.data!.__type.fields as {
    name: string;
    type: { kind: string; ofType: { kind: string } | null };
  }[];
  return fields.filter((f) => ["SCALAR", "ENUM"].includes(f.type.ofType?.kind ?? f.type.kind)).map((f) => f.name);
}

describe("provider accounts", () => {
  it("are created through the API with a write-only secret: no field of ProviderAccount returns it", async () => {
    const secret = "SG.tenant-a-sendgrid-key-9f3b";
    const created = await graphql(
      api.current,
      ownerA,
      `
        mutation ($s: String!) {
          createProviderAccount(
            input: {
              kind: "sendgrid"
              name: "Mail"
              secret: $s
              webhookPublicKey: "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE"
            }
          ) {
            result {
              rowId
              kind
              secretHint
              status
            }
          }
        }
      `,
      { s: secret },
    );
    expect(created.body.errors, JSON.stringify(created.body)).toBeUndefined();
    expect(created.body.data!.createProviderAccount.result).toMatchObject({
      kind: "sendgrid",
      secretHint: "9f3b",
      status: "active",
    });

    const fields = await allProviderAccountFields();
    expect(fields).toContain("secretHint");
    expect(fields.filter((f) => /secret|encrypted|webhook/i.test(f) && f !== "secretHint")).toEqual([]);
    const everything = await graphql(api.current, ownerA, `{ allProviderAccounts { nodes { ${fields.join(" ")} } } }`);
    expect(everything.body.errors).toBeUndefined();
    const text = JSON.stringify(everything.body);
    for (const s of [secret, a.providerSecret, "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE"]) expect(text).not.toContain(s);
  });

  it("only the tenant's owners and admins manage them; members cannot even select the ciphertext", async () => {
    const { body } = await graphql(
      api.current,
      memberA,
      `mutation { createProviderAccount(input: {kind: "twilio", name: "X", secret: "abcdefgh12", twilioAccountSid: "AC${"2".repeat(32)}"}) { result { rowId } } }`,
    );
    expect(body.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
    await asRole(db.current, { role: ROLES.member, tenantId: a.id, userId: a.ownerId }, async (c) => {
      const error = await expectPgError(c, () =>
        c.query("select secret_encrypted from herald_public.provider_accounts"),
      );
      expect(error?.code).toBe("42501");
    });
  });

  it("an owner replaces a credential: the hint changes, the worker reads the new one", async () => {
    const { body } = await graphql(
      api.current,
      ownerA,
      `
        mutation ($id: UUID!) {
          setProviderAccountSecret(input: { providerAccountId: $id, secret: "rotated-token-77aa" }) {
            result {
              secretHint
            }
          }
        }
      `,
      {
        id: a.providerAccountId,
      },
    );
    expect(body.data?.setProviderAccountSecret?.result, JSON.stringify(body)).toEqual({ secretHint: "77aa" });
    const settings = await testKeyring().sessionSettings(db.current.root, a.id);
    const secret = await asRole(
      db.current,
      { role: ROLES.worker, tenantId: a.id, settings },
      async (c) =>
        (await c.query("select secret from herald_hidden.provider_account_secret($1)", [a.providerAccountId])).rows[0]
          ?.secret,
    );
    expect(secret).toBe("rotated-token-77aa");
    a.providerSecret = "rotated-token-77aa";
  });

  it("the worker, inside the tenant with its key, reads the credential it sends with", async () => {
    const settings = await testKeyring().sessionSettings(db.current.root, a.id);
    const secret = await asRole(
      db.current,
      { role: ROLES.worker, tenantId: a.id, settings },
      async (c) =>
        (await c.query("select secret from herald_hidden.provider_account_secret($1)", [a.providerAccountId])).rows[0]
          ?.secret,
    );
    expect(secret).toBe(a.providerSecret);
    // In B's context, A's account does not exist.
    const settingsB = await testKeyring().sessionSettings(db.current.root, b.id);
    const fromB = await asRole(
      db.current,
      { role: ROLES.worker, tenantId: b.id, settings: settingsB },
      async (c) =>
        (await c.query("select secret from herald_hidden.provider_account_secret($1)", [a.providerAccountId])).rows,
    );
    expect(fromB).toEqual([]);
  });
});

describe("tenant B attacking tenant A's provider setup through GraphQL", () => {
  it("sees none of A's accounts, numbers or senders", async () => {
    const { body } = await graphql(
      api.current,
      ownerB,
      `
        {
          allProviderAccounts {
            nodes {
              rowId
            }
          }
          allSenderNumbers {
            nodes {
              rowId
            }
          }
          allEmailSenders {
            nodes {
              rowId
            }
          }
        }
      `,
    );
    expect(body.data).toEqual({
      allProviderAccounts: { nodes: [{ rowId: b.providerAccountId }] },
      allSenderNumbers: { nodes: [{ rowId: b.senderNumberId }] },
      allEmailSenders: { nodes: [{ rowId: b.emailSenderId }] },
    });
  });

  it("cannot send from A's account or claim A's number, nor replace A's credential", async () => {
    const onAccount = await graphql(
      api.current,
      ownerB,
      `
        mutation ($acc: UUID!) {
          createSenderNumber(input: { senderNumber: { phoneNumber: "+15005550009", providerAccountId: $acc } }) {
            senderNumber {
              rowId
            }
          }
        }
      `,
      {
        acc: a.providerAccountId,
      },
    );
    expect(onAccount.body.errors?.[0]?.extensions?.code).toBe("NOT_FOUND");
    const claim = await graphql(
      api.current,
      ownerB,
      `
        mutation ($n: String!, $acc: UUID!) {
          createSenderNumber(input: { senderNumber: { phoneNumber: $n, providerAccountId: $acc } }) {
            senderNumber {
              rowId
              status
            }
          }
        }
      `,
      {
        n: a.senderNumber,
        acc: b.providerAccountId,
      },
    );
    // B's claim on A's number is only a claim: pending until the provider confirms it (it will not),
    // and no CONFLICT that would tell B the number is registered. A's number still routes to A.
    expect(claim.body.errors).toBeUndefined();
    expect(claim.body.data!.createSenderNumber.senderNumber.status).toBe("pending");
    const { rows: owners } = await db.current.root.query(
      "select tenant_id from herald_private.inbound_number_owner($1, 'sms')",
      [a.senderNumber],
    );
    expect(owners).toEqual([{ tenant_id: a.id }]);
    // A number on the system account (no account of its own) is the operators' to assign.
    const onSystem = await graphql(
      api.current,
      ownerB,
      `
        mutation {
          createSenderNumber(input: { senderNumber: { phoneNumber: "+15005550006" } }) {
            senderNumber {
              rowId
            }
          }
        }
      `,
    );
    expect(onSystem.body.errors?.[0]?.extensions?.code).toBe("FORBIDDEN");
    const replace = await graphql(
      api.current,
      ownerB,
      `
        mutation ($id: UUID!) {
          setProviderAccountSecret(input: { providerAccountId: $id, secret: "stolen-credential" }) {
            result {
              rowId
            }
          }
        }
      `,
      {
        id: a.providerAccountId,
      },
    );
    expect(replace.body.errors?.[0]?.extensions?.code).toBe("NOT_FOUND");
    const settings = await testKeyring().sessionSettings(db.current.root, a.id);
    const stillA = await asRole(
      db.current,
      { role: ROLES.worker, tenantId: a.id, settings },
      async (c) =>
        (await c.query("select secret from herald_hidden.provider_account_secret($1)", [a.providerAccountId])).rows[0]
          .secret,
    );
    expect(stillA).toBe(a.providerSecret);
  });
});
