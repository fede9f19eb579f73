import type { Command } from "commander";
import { revokeMembership } from "../admin.ts";
import {
  asOperator,
  CliError,
  confirm,
  operatorDetail,
  print,
  requireTenant,
  slugArg,
  withDatabase,
} from "./shared.ts";

/**
 * `herald user delete` and `herald membership remove`: the operator's way to
 * take a person out of Herald or out of one tenant. Both go through the same
 * rules as tenants' own owners: a tenant keeps at least one owner (the
 * memberships trigger refuses with LSTOW), and every removal is in the
 * tenant's audit log.
 */

const LAST_OWNER = "LSTOW";

const lastOwnerError = (email: string) =>
  new CliError(
    `${email} is the last owner of a tenant: make someone else its owner first (\`herald user create <email> --tenant <slug> --role owner\`), or delete the tenant.`,
  );

async function findUser(pool: Parameters<typeof asOperator>[0], email: string) {
  const { rows } = await asOperator(pool, (client) =>
    client.query<{ id: string; email: string; tenants: string[] }>(
      `select u.id, u.email::text,
              coalesce(array_agg(t.slug::text order by t.slug) filter (where t.id is not null), '{}') as tenants
         from herald_public.users u
         left join herald_public.memberships m on m.user_id = u.id
         left join herald_public.tenants t on t.id = m.tenant_id
        where u.email = $1::citext
        group by u.id`,
      [email],
    ),
  );
  return rows[0];
}

export function registerMemberCommands(program: Command, user: Command): void {
  user
    .command("delete")
    .description("Delete a user and their memberships (not a tenant's last owner); their tokens stop working.")
    .argument("<email>", "the user's email")
    .option("--yes", "do not ask for confirmation")
    .action(async (email: string, opts: { yes?: boolean }) =>
      withDatabase(async ({ pool }) => {
        const found = await findUser(pool, email);
        if (!found) throw new CliError(`No user with email ${email}.`);
        const where = found.tenants.length > 0 ? ` (member of ${found.tenants.join(", ")})` : "";
        if (!opts.yes && !(await confirm(`Delete ${found.email}${where}? This cannot be undone.`))) {
          print("Nothing changed.");
          return;
        }
        await asOperator(pool, (client) =>
          client.query("delete from herald_public.users where id = $1", [found.id]),
        ).catch((error: { code?: string }) => {
          if (error.code === LAST_OWNER) throw lastOwnerError(found.email);
          throw error;
        });
        print(`Deleted user ${found.email}${where}.`);
      }),
    );

  program
    .command("membership")
    .description("Manage memberships.")
    .command("remove")
    .description("Remove a user from a tenant (not its last owner); their tokens for it stop working.")
    .argument("<email>", "the user's email")
    .requiredOption("--tenant <slug>", "the tenant", slugArg)
    .action(async (email: string, opts: { tenant: string }) =>
      withDatabase(async ({ pool }) => {
        const t = await requireTenant(pool, opts.tenant);
        const found = await findUser(pool, email);
        if (!found) throw new CliError(`No user with email ${email}.`);
        const removed = await revokeMembership(pool, {
          tenantId: t.id,
          userId: found.id,
          actorDetail: operatorDetail(),
        }).catch((error: { code?: string }) => {
          if (error.code === LAST_OWNER) throw lastOwnerError(found.email);
          throw error;
        });
        if (!removed) throw new CliError(`${found.email} is not a member of ${t.slug}.`);
        print(`Removed ${found.email} from ${t.slug}.`);
      }),
    );
}
