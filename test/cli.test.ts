import { beforeAll, describe, expect, it } from "vitest";
import { runCli } from "./helpers/cli.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";

/**
 * Every `herald` command, run as an operator runs it (a process of its own on
 * this file's database), for what it prints and what it changes. Covered
 * elsewhere: `tenant suspend|resume` (operators.test.ts), `contacts import`
 * (import.test.ts), `usage` (usage.test.ts), `doctor` (doctor.test.ts),
 * `db dump --check` (schema.test.ts), `user create` with operators
 * (memberships.test.ts), the key rotations' work (keys.test.ts). Not run here:
 * `db reset` (drops the embedded database: nothing to point it at in a test)
 * and `db watch` (a long-running watcher), nor `db commit|uncommit` (they
 * rewrite the repository's migrations).
 */

const db = useTestDatabase();
let a: TenantFixture;
let b: TenantFixture;

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
});

const CLI_TIMEOUT = 180_000; // each command starts a process that opens the database

const cli = async (args: string[], expectedCode = 0) => {
  const result = await runCli(db.current, args);
  expect(result.code, `herald ${args.join(" ")}: ${result.stderr}`).toBe(expectedCode);
  return result;
};
const rootQuery = async (sql: string, params: unknown[] = []) => (await db.current.root.query(sql, params)).rows;

describe("herald tenant", () => {
  it(
    "creates, lists and deletes a tenant (with --yes; without it and no terminal, nothing changes)",
    { timeout: CLI_TIMEOUT },
    async () => {
      const created = await cli(["tenant", "create", "cli-made", "--name", "Made by the CLI"]);
      expect(created.stdout).toMatch(/^Created tenant cli-made \(Made by the CLI\), id [0-9a-f-]{36}\n$/);
      expect(
        await rootQuery(
          "select count(*)::int as n from herald_public.tenant_settings s join herald_public.tenants t on t.id = s.tenant_id where t.slug = 'cli-made'",
        ),
      ).toEqual([{ n: 1 }]);
      const again = await cli(["tenant", "create", "cli-made", "--name", "Again"], 1);
      expect(again.stderr).toContain('A tenant with slug "cli-made" already exists.');

      const listed = await cli(["tenant", "list"]);
      expect(listed.stdout.split("\n").map((line) => line.split(/\s+/)[0])).toEqual(
        expect.arrayContaining(["cli-made", a.slug, b.slug]),
      );

      const unconfirmed = await cli(["tenant", "delete", "cli-made"]);
      expect(unconfirmed.stdout).toContain("Nothing changed.");
      const deleted = await cli(["tenant", "delete", "cli-made", "--yes"]);
      expect(deleted.stdout).toContain("Deleted cli-made; its data key is destroyed.");
      expect(await rootQuery("select slug from herald_public.tenants where slug = 'cli-made'")).toEqual([]);
      expect((await cli(["tenant", "delete", "no-such-tenant", "--yes"], 1)).stderr).toContain(
        'No tenant with slug "no-such-tenant"',
      );
    },
  );
});

describe("herald user and membership", () => {
  it(
    "user create prints a password once; membership remove takes the user out of one tenant; user delete removes them",
    { timeout: CLI_TIMEOUT },
    async () => {
      const created = await cli([
        "user",
        "create",
        "temp@cli.test",
        "--tenant",
        a.slug,
        "--role",
        "admin",
        "--name",
        "Temp",
      ]);
      expect(created.stdout).toMatch(
        /^Created user temp@cli\.test \(admin of tenant-a\), id [0-9a-f-]{36}\nPassword \(shown once\): \S{16}\n$/,
      );
      await cli(["user", "create", "temp@cli.test", "--tenant", b.slug]);
      const memberships = () =>
        rootQuery(
          "select t.slug::text from herald_public.memberships m join herald_public.users u on u.id = m.user_id join herald_public.tenants t on t.id = m.tenant_id where u.email = 'temp@cli.test' order by 1",
        );
      expect(await memberships()).toEqual([{ slug: a.slug }, { slug: b.slug }]);

      const removed = await cli(["membership", "remove", "temp@cli.test", "--tenant", a.slug]);
      expect(removed.stdout).toBe(`Removed temp@cli.test from ${a.slug}.\n`);
      expect(await memberships()).toEqual([{ slug: b.slug }]);
      const notMember = await cli(["membership", "remove", "temp@cli.test", "--tenant", a.slug], 1);
      expect(notMember.stderr).toContain(`temp@cli.test is not a member of ${a.slug}.`);
      // In A's audit log, as the operator's CLI.
      const logged = await rootQuery(
        "select action, actor_kind, actor_detail from herald_public.audit_log where tenant_id = $1 and table_name = 'memberships' order by id desc limit 1",
        [a.id],
      );
      expect(logged).toEqual([
        { action: "delete", actor_kind: "operator", actor_detail: expect.stringContaining("herald cli") },
      ]);

      expect((await cli(["user", "delete", "temp@cli.test"])).stdout).toContain("Nothing changed.");
      const deleted = await cli(["user", "delete", "temp@cli.test", "--yes"]);
      expect(deleted.stdout).toBe(`Deleted user temp@cli.test (member of ${b.slug}).\n`);
      expect(await rootQuery("select id from herald_public.users where email = 'temp@cli.test'")).toEqual([]);
      expect((await cli(["user", "delete", "temp@cli.test", "--yes"], 1)).stderr).toContain(
        "No user with email temp@cli.test.",
      );
    },
  );

  it("neither removes nor deletes a tenant's last owner", { timeout: CLI_TIMEOUT }, async () => {
    const owner = `owner@${a.slug}.test`;
    const removal = await cli(["membership", "remove", owner, "--tenant", a.slug], 1);
    expect(removal.stderr).toContain(`${owner} is the last owner of a tenant`);
    const deletion = await cli(["user", "delete", owner, "--yes"], 1);
    expect(deletion.stderr).toContain(`${owner} is the last owner of a tenant`);
    expect(
      await rootQuery("select role from herald_public.memberships where tenant_id = $1 and user_id = $2", [
        a.id,
        a.ownerId,
      ]),
    ).toEqual([{ role: "owner" }]);
  });
});

describe("herald token, api-key, keys, db", () => {
  it(
    "token signs a member JWT for the tenant's owner, or a named member; refuses a stranger",
    { timeout: CLI_TIMEOUT },
    async () => {
      const claims = (jwt: string) => JSON.parse(Buffer.from(jwt.trim().split(".")[1]!, "base64url").toString());
      const owner = await cli(["token", "--tenant", a.slug, "--expires", "30m"]);
      expect(claims(owner.stdout)).toMatchObject({ role: "herald_member", tenant_id: a.id, sub: a.ownerId });
      const member = await cli(["token", "--tenant", a.slug, "--user", `member@${a.slug}.test`]);
      expect(claims(member.stdout)).toMatchObject({ tenant_id: a.id, sub: a.memberId });
      const stranger = await cli(["token", "--tenant", a.slug, "--user", `member@${b.slug}.test`], 1);
      expect(stranger.stderr).toContain(`is not a member of ${a.slug}`);
      expect((await cli(["token"], 1)).stderr).toContain("Give --tenant <slug>, or --admin.");
    },
  );

  it("api-key create prints the secret once, stored only as its hash", { timeout: CLI_TIMEOUT }, async () => {
    const created = await cli(["api-key", "create", "--tenant", b.slug, "--name", "CLI key"]);
    const [line, secret] = created.stdout.trim().split("\n");
    const id = /Created API key ([0-9a-f-]{36}) for tenant-b/.exec(line!)?.[1];
    expect(secret).toMatch(/^hk_[0-9a-f]{48}$/);
    expect(
      await rootQuery(
        "select name, secret_hash = public.digest($2, 'sha256') as hashed from herald_public.api_keys where id = $1",
        [id, secret],
      ),
    ).toEqual([{ name: "CLI key", hashed: true }]);
  });

  it(
    "keys rotate-tenant --no-wait queues a rotation; db migrate says the database is up to date",
    { timeout: CLI_TIMEOUT },
    async () => {
      const rotation = await cli(["keys", "rotate-tenant", b.slug, "--no-wait"]);
      expect(rotation.stdout).toMatch(new RegExp(`Rotation \\S+ for ${b.slug} is queued`));
      expect((await cli(["db", "migrate"])).stdout).toBe("Database is up to date.\n");
    },
  );
});
