import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { importContacts } from "../src/contacts/import.ts";
import { runCli } from "./helpers/cli.ts";
import { useTestDatabase, withRootDb } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import { testKeyring } from "./helpers/keys.ts";

/** `herald contacts import`: streaming CSV, rejects with line numbers, idempotent re-runs. */

const db = useTestDatabase();
let a: TenantFixture;
let dir: string;

beforeAll(async () => {
  ({ a } = await seedTwoTenants(db.current));
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "herald-import-"));
});

// Line numbers are the file's: the header is line 1; Fay's quoted note spans lines 8-9.
const CSV = [
  "First Name,last_name,Phone,email,external_id,sms_subscribed,vip_level",
  "Ann,Lee,+1 (415) 555-2671,ann@example.com,crm-1,yes,gold", // 2
  "Bob,Ray,4155552672,BOB@Example.com,crm-2,,", // 3: national format, upper-case email
  "Cat,Bad,12345,cat@example.com,crm-3,,", // 4: invalid phone
  "Dan,Dup,(415) 555-2671,,crm-4,,", // 5: Ann's phone again
  "Eve,Mail,,not-an-email,crm-5,,", // 6: invalid email
  "Gus,NoWay,,,crm-6,,", // 7: neither phone nor email
  'Fay,"Multi', // 8
  'Line",+44 20 7946 0958,fay@example.co.uk,crm-7,no,silver', // 9 (same record)
  "Hal,Flag,+14155552673,hal@example.com,crm-8,maybe,", // 10: bad boolean
  "Ivy,Ok,+14155552674,ivy@example.com,crm-9,,", // 11
].join("\n");

const contactsOfA = () =>
  withRootDb(
    db.current,
    async (c) =>
      (
        await c.query(
          `select c.id, c.first_name, c.last_name, c.external_id, c.sms_subscribed, c.attributes, c.phone_encrypted, c.updated_at,
                array(select t.name::text from herald_public.contact_tags ct join herald_public.tags t on t.tenant_id = ct.tenant_id and t.id = ct.tag_id
                       where ct.tenant_id = c.tenant_id and ct.contact_id = c.id order by 1) as tags,
                array(select l.name::text from herald_public.list_members lm join herald_public.lists l on l.tenant_id = lm.tenant_id and l.id = lm.list_id
                       where lm.tenant_id = c.tenant_id and lm.contact_id = c.id order by 1) as lists
           from herald_public.contacts c where c.tenant_id = $1 and c.external_id like 'crm-%' order by c.external_id`,
          [a.id],
        )
      ).rows,
  );

describe("importContacts", () => {
  it("imports valid rows, reports each bad one with its line and column, and a re-import changes nothing", async () => {
    const file = path.join(dir, "contacts.csv");
    fs.writeFileSync(file, CSV);
    const rejectsFile = path.join(dir, "contacts.rejects.csv");
    const run = () =>
      importContacts({
        pool: db.current.authenticator,
        keyring: testKeyring(),
        tenantId: a.id,
        file,
        tags: ["imported", "vip"],
        lists: ["Spring 2026"],
        rejectsFile,
        batchSize: 2, // several batches, written two at a time
      });

    const first = await run();
    expect(first).toEqual({ rows: 9, inserted: 4, updated: 0, unchanged: 0, rejected: 5, rejectsFile });
    expect(fs.readFileSync(rejectsFile, "utf8").trim().split("\n")).toEqual([
      "line,column,reason",
      "4,Phone,is not a valid phone number (numbers without +country code are read as US)",
      "5,Phone,same phone as line 2",
      "6,email,is not a valid email address",
      "7,phone,a contact needs a phone or an email",
      '10,sms_subscribed,"must be true/false (or yes/no, 1/0)"',
    ]);

    const stored = await contactsOfA();
    expect(
      stored.map((r) => [r.external_id, r.first_name, r.last_name, r.sms_subscribed, r.attributes, r.tags, r.lists]),
    ).toEqual([
      ["crm-1", "Ann", "Lee", true, { vip_level: "gold" }, ["imported", "vip"], ["Spring 2026"]],
      ["crm-2", "Bob", "Ray", true, {}, ["imported", "vip"], ["Spring 2026"]],
      ["crm-7", "Fay", "Multi\nLine", false, { vip_level: "silver" }, ["imported", "vip"], ["Spring 2026"]],
      ["crm-9", "Ivy", "Ok", true, {}, ["imported", "vip"], ["Spring 2026"]],
    ]);
    // The existing "vip" tag was reused, not duplicated.
    const vipTags = await withRootDb(
      db.current,
      async (c) =>
        (
          await c.query("select count(*)::int as n from herald_public.tags where tenant_id = $1 and name = 'vip'", [
            a.id,
          ])
        ).rows[0].n,
    );
    expect(vipTags).toBe(1);

    const second = await run();
    expect(second).toEqual({ rows: 9, inserted: 0, updated: 0, unchanged: 4, rejected: 5, rejectsFile });
    expect(await contactsOfA()).toEqual(stored);
  });

  it("refuses a file whose extra columns look like a phone or email (they would be stored unencrypted)", async () => {
    const file = path.join(dir, "exported.csv");
    fs.writeFileSync(
      file,
      "first_name,phone,Mobile Phone,Work Email,notes\nZed,+14155550177,+14155550178,zed@work.example,hi\n",
    );
    const before = await contactsOfA();
    await expect(
      importContacts({
        pool: db.current.authenticator,
        keyring: testKeyring(),
        tenantId: a.id,
        file,
        rejectsFile: path.join(dir, "exported.rejects.csv"),
      }),
    ).rejects.toThrow(/"Mobile Phone", "Work Email" look like a phone or email/);
    expect(await contactsOfA()).toEqual(before);
  });

  it("rejects a row whose attribute holds an email address", async () => {
    const file = path.join(dir, "notes.csv");
    fs.writeFileSync(file, "phone,notes\n+14155550179,ask zed@elsewhere.example\n+14155550180,plain note\n");
    const summary = await importContacts({
      pool: db.current.authenticator,
      keyring: testKeyring(),
      tenantId: a.id,
      file,
      rejectsFile: path.join(dir, "notes.rejects.csv"),
    });
    expect(summary).toMatchObject({ inserted: 1, rejected: 1 });
    expect(fs.readFileSync(path.join(dir, "notes.rejects.csv"), "utf8")).toContain(
      '2,notes,"holds an email address; attributes are stored unencrypted"',
    );
  });

  it("the CLI prints a summary and writes the rejects next to the file", async () => {
    const file = path.join(dir, "cli.csv");
    fs.writeFileSync(file, "phone,email\n+14155552680,cli1@example.com\n999,cli2@example.com\n");
    const { code, stdout, stderr } = await runCli(
      db.current,
      ["contacts", "import", file, "--tenant", a.slug, "--list", "From CLI"],
      { NODE_ENV: "production", LOG_LEVEL: "error" },
    );
    expect(code, stderr).toBe(0);
    expect(stdout).toMatch(
      /^Imported cli\.csv into tenant-a: 1 inserted, 0 updated, 0 unchanged, 1 rejected — 2 rows in [\d.]+ s/m,
    );
    expect(stdout).toContain(`Rejected rows are described in ${path.join(dir, "cli.rejects.csv")}`);
    expect(fs.readFileSync(path.join(dir, "cli.rejects.csv"), "utf8")).toMatch(
      /^line,column,reason\n3,phone,is not a valid phone number/,
    );
  });
});
