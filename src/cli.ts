import "./env-defaults.ts";
import { randomBytes } from "node:crypto";
import { Command, InvalidArgumentError, Option } from "commander";
import pg from "pg";
import {
  createTenant,
  findMembershipUser,
  findOrCreateUser,
  findTenant,
  grantMembership,
  registerOperator,
  setUserPassword,
} from "./admin.ts";
import { createAuthenticator } from "./auth.ts";
import { ROLES } from "./db/urls.ts";
import { formatReport, runDoctor } from "./doctor.ts";
import { formatAllowList, heldGrants } from "./doctor/grants.ts";
import { reportStartupError } from "./startup-errors.ts";
import { registerContactCommands } from "./cli/contacts.ts";
import { registerDbCommands } from "./cli/db.ts";
import { registerKeyCommands } from "./cli/keys.ts";
import { registerMemberCommands } from "./cli/members.ts";
import { registerUsageCommand } from "./cli/usage.ts";
import {
  asOperator,
  CliError,
  confirm,
  logger,
  operatorDetail,
  print,
  requireTenant,
  slugArg,
  withDatabase,
} from "./cli/shared.ts";

/**
 * `herald` (`npm run herald -- …`): operator commands. Each opens the database
 * the way `npm start` does (starting the embedded server if it is not running,
 * attaching to it if it is) and acts as herald_admin through RLS like any request.
 */

/** A token lifetime like 30m, 12h or 7d; capped so a leaked development token does not live for ever. */
const durationArg = (value: string) => {
  const match = /^(\d+)([smhd])$/.exec(value);
  const seconds = match
    ? Number(match[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[match[2] as "s" | "m" | "h" | "d"]
    : NaN;
  if (!(seconds > 0 && seconds <= 30 * 86400)) {
    throw new InvalidArgumentError("use a number with s, m, h or d (e.g. 12h), at most 30d");
  }
  return value;
};

const program = new Command()
  .name("herald")
  .description("Operate Herald: tenants, users, tokens, API keys, the database, and isolation checks.")
  .showHelpAfterError();

const tenant = program.command("tenant").description("Create and list tenants.");
tenant
  .command("create")
  .description("Create a tenant (with default settings).")
  .argument("<slug>", "short unique handle, e.g. acme-clinic", slugArg)
  .requiredOption("--name <name>", 'display name, e.g. "Acme Clinic"')
  .action(async (slug: string, opts: { name: string }) =>
    withDatabase(async ({ pool }) => {
      const created = await asOperator(pool, async (client) => {
        if (await findTenant(client, slug)) throw new CliError(`A tenant with slug "${slug}" already exists.`);
        return createTenant(client, { slug, name: opts.name });
      });
      print(`Created tenant ${created.slug} (${created.name}), id ${created.id}`);
    }),
  );
tenant
  .command("list")
  .description("List tenants.")
  .action(async () =>
    withDatabase(async ({ pool }) => {
      const { rows } = await asOperator(pool, (client) =>
        client.query<{ slug: string; name: string; status: string; id: string }>(
          "select slug::text, name, status, id from herald_public.tenants order by slug",
        ),
      );
      if (rows.length === 0) print("No tenants yet. `herald tenant create <slug> --name <name>` makes one.");
      for (const r of rows) print(`${r.slug.padEnd(24)} ${r.status.padEnd(10)} ${r.id}  ${r.name}`);
    }),
  );

tenant
  .command("delete")
  .description("Delete a tenant and everything it owns, destroying its data key (crypto-shredding its contacts' PII).")
  .argument("<slug>", "the tenant", slugArg)
  .option("--yes", "do not ask for confirmation")
  .action(async (slug: string, opts: { yes?: boolean }) =>
    withDatabase(async ({ pool }) => {
      const t = await requireTenant(pool, slug);
      if (
        !opts.yes &&
        !(await confirm(`Delete ${t.slug} (${t.name}) with all its contacts and messages? This cannot be undone.`))
      ) {
        print("Nothing changed.");
        return;
      }
      await asOperator(pool, (client) => client.query("delete from herald_public.tenants where id = $1", [t.id]));
      print(`Deleted ${t.slug}; its data key is destroyed.`);
      print(
        "Backups taken earlier still hold that key wrapped by the master key: `herald keys rotate-master`, then destroy the old master key, to shred those copies too.",
      );
    }),
  );

tenant
  .command("suspend")
  .description("Suspend a tenant: its users and API keys stop working and its sends are held until it is resumed.")
  .argument("<slug>", "the tenant", slugArg)
  .requiredOption("--reason <text>", "why (kept on the tenant and in the audit log's row)")
  .action(async (slug: string, opts: { reason: string }) =>
    withDatabase(async ({ pool }) => {
      const t = await requireTenant(pool, slug);
      await asOperator(pool, (client) =>
        client.query("select herald_public.suspend_tenant($1, $2)", [t.id, opts.reason]),
      );
      print(
        `Suspended ${t.slug}: its users and API keys get 401 and its sends are held. \`herald tenant resume ${t.slug}\` undoes it.`,
      );
    }),
  );

tenant
  .command("resume")
  .description("Resume a suspended tenant; the sends it held go out.")
  .argument("<slug>", "the tenant", slugArg)
  .action(async (slug: string) =>
    withDatabase(async ({ pool }) => {
      const t = await requireTenant(pool, slug);
      await asOperator(pool, (client) => client.query("select herald_public.resume_tenant($1)", [t.id]));
      print(`Resumed ${t.slug}.`);
    }),
  );

const user = program.command("user").description("Manage users.");
user
  .command("create")
  .description("Create a user (or reuse one by email) and add them to a tenant.")
  .argument("<email>", "the user's email, used to sign in")
  .requiredOption("--tenant <slug>", "tenant to join", slugArg)
  .addOption(new Option("--role <role>", "role in the tenant").choices(["owner", "admin", "member"]).default("member"))
  .option("--name <name>", "display name")
  .option("--password-stdin", "read the password from standard input instead of generating one")
  .action(
    async (
      email: string,
      opts: { tenant: string; role: "owner" | "admin" | "member"; name?: string; passwordStdin?: boolean },
    ) => {
      const password = opts.passwordStdin ? await readStdin() : randomBytes(12).toString("base64url");
      await withDatabase(async ({ pool }) => {
        const t = await requireTenant(pool, opts.tenant);
        const u = await asOperator(pool, (client) => findOrCreateUser(client, { email, displayName: opts.name }));
        try {
          await grantMembership(pool, { tenantId: t.id, userId: u.id, role: opts.role, actorDetail: operatorDetail() });
        } catch (error) {
          if ((error as { code?: string }).code === "OPSLF") {
            throw new CliError(
              `${u.email} is a platform operator's user (named in admin tokens): operators cannot make themselves members of a tenant.`,
            );
          }
          throw error;
        }
        await setUserPassword(pool, u.id, password);
        print(`${u.created ? "Created" : "Updated"} user ${u.email} (${opts.role} of ${t.slug}), id ${u.id}`);
        if (!opts.passwordStdin) print(`Password (shown once): ${password}`);
      });
    },
  );

program
  .command("token")
  .description("Mint a development JWT for a tenant's user, or a platform-admin token.")
  .option("--tenant <slug>", "the tenant the token acts in", slugArg)
  .option("--user <email>", "the user (default: the tenant's owner); with --admin, the operator the audit log names")
  .option("--admin", "a herald_admin token (reads across tenants)")
  .option("--expires <duration>", "lifetime, e.g. 30m, 12h, 7d (at most 30d)", durationArg, "12h")
  .action(async (opts: { tenant?: string; user?: string; admin?: boolean; expires: string }) => {
    if (!opts.admin && !opts.tenant) throw new CliError("Give --tenant <slug>, or --admin.");
    await withDatabase(async ({ config, pool }) => {
      const auth = createAuthenticator(config, pool);
      if (opts.admin) {
        const t = opts.tenant ? await requireTenant(pool, opts.tenant) : undefined;
        // An operator need not belong to any tenant, so the user is made here if need be; said aloud, so a typo is seen.
        const operator = opts.user
          ? await asOperator(pool, (client) => findOrCreateUser(client, { email: opts.user! }))
          : undefined;
        if (operator?.created) process.stderr.write(`Created user ${operator.email} (no user had that email).\n`);
        // From now on this user can never be granted a membership: an operator cannot make itself a tenant's member.
        if (operator) {
          await registerOperator(pool, operator.id).catch((error: { code?: string }) => {
            if (error.code === "OPMEM")
              throw new CliError(
                `${operator.email} belongs to a tenant; name an operator user of its own (an email no tenant uses).`,
              );
            throw error;
          });
        }
        print(await auth.sign({ role: ROLES.admin, tenant_id: t?.id, sub: operator?.id }, opts.expires));
        return;
      }
      const t = await requireTenant(pool, opts.tenant!);
      const u = await asOperator(pool, (client) => findMembershipUser(client, t.id, opts.user));
      if (!u)
        throw new CliError(`${opts.user ?? "No user"} is not a member of ${t.slug}. \`herald user create\` adds one.`);
      print(await auth.sign({ role: ROLES.member, tenant_id: t.id, sub: u.id }, opts.expires));
    });
  });

const apiKey = program.command("api-key").description("Manage tenant API keys.");
apiKey
  .command("create")
  .description("Create an API key for a tenant; the secret is printed once.")
  .requiredOption("--tenant <slug>", "tenant", slugArg)
  .requiredOption("--name <name>", 'what the key is for, e.g. "CRM sync"')
  .action(async (opts: { tenant: string; name: string }) =>
    withDatabase(async ({ pool }) => {
      const t = await requireTenant(pool, opts.tenant);
      const created = await asOperator(
        pool,
        async (client) => {
          const { rows } = await client.query<{ api_key_id: string; secret: string }>(
            "select api_key_id, secret from herald_public.create_api_key($1)",
            [opts.name],
          );
          return rows[0]!;
        },
        { tenantId: t.id },
      );
      print(`Created API key ${created.api_key_id} for ${t.slug}. Secret (shown once):`);
      print(created.secret);
    }),
  );

registerDbCommands(program);

program
  .command("doctor")
  .description(
    "Check the isolation model: catalog rules (RLS, policies, roles, definer functions, views, keys), grants against src/doctor/allowed-grants.ts, and probes as each request role.",
  )
  .option(
    "--print-grants",
    "print the request roles' grants in allowed-grants.ts's format (for reviewing a new grant) and check nothing",
  )
  .action(async (opts: { printGrants?: boolean }) =>
    withDatabase(async ({ db: database }) => {
      const owner = new pg.Client({ connectionString: database.urls.owner });
      // The probes act as the request roles the way the API does: through the authenticator.
      const authenticator = new pg.Client({ connectionString: database.urls.authenticator });
      await owner.connect();
      await authenticator.connect();
      try {
        if (opts.printGrants) {
          print(formatAllowList(await heldGrants(owner)));
          return;
        }
        // Everything the probes write is rolled back.
        await authenticator.query("begin");
        const result = await runDoctor(owner, authenticator);
        await authenticator.query("rollback");
        print(formatReport(result));
        if (result.findings.length > 0) process.exitCode = 1;
      } finally {
        await owner.end();
        await authenticator.end();
      }
    }),
  );

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks)
    .toString("utf8")
    .replace(/\r?\n$/, "");
}

registerContactCommands(program);
registerKeyCommands(program);
registerUsageCommand(program);
registerMemberCommands(program, user);

program.parseAsync().catch((error: unknown) => {
  if (error instanceof CliError) {
    process.stderr.write(`herald: ${error.message}\n`);
  } else if ((error as { code?: string }).code === "WEAKP") {
    process.stderr.write(`herald: ${(error as Error).message}\n`);
  } else {
    reportStartupError(error, logger);
  }
  process.exitCode = 1;
});
