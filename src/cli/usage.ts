import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import type pg from "pg";
import { asAdmin } from "../db/session.ts";
import { print, requireTenant, slugArg, withDatabase } from "./shared.ts";

/** `herald usage --tenant <slug> [--month YYYY-MM]`: a tenant's daily usage (herald_public.daily_usage) as a table. */

const monthArg = (value: string) => {
  if (!/^\d{4}-(0[1-9]|1[0-2])$/.test(value)) throw new InvalidArgumentError("use YYYY-MM, e.g. 2026-12");
  return value;
};

const COLUMNS = [
  ["day", "day"],
  ["channel", "channel"],
  ["account", "account"],
  ["messages", "messages"],
  ["deliveries", "deliveries"],
  ["sent", "sent"],
  ["delivered", "delivered"],
  ["undelivered", "undelivered"],
  ["failed", "failed"],
  ["skipped", "skipped"],
  ["queued", "queued"],
  ["segments", "segments"],
  ["inbound", "inbound"],
  ["opt_outs", "opt-outs"],
] as const;
const COUNTS = COLUMNS.slice(3).map(([key]) => key);

type UsageRow = Record<(typeof COLUMNS)[number][0], string | number | null>;

export async function usageOf(client: pg.ClientBase, tenantId: string, month: string): Promise<UsageRow[]> {
  const { rows } = await client.query<UsageRow>(
    `select to_char(day, 'YYYY-MM-DD') as day, channel, coalesce(account, '-') as account, ${COUNTS.join(", ")}
       from herald_public.daily_usage
      where tenant_id = $1 and day >= $2::date and day < ($2::date + interval '1 month')
      order by day, channel, account`,
    [tenantId, `${month}-01`],
  );
  return rows;
}

export function formatUsage(rows: UsageRow[]): string {
  const total: UsageRow = Object.fromEntries(COLUMNS.map(([key]) => [key, COUNTS.includes(key as never) ? 0 : ""])) as UsageRow;
  total.day = "total";
  for (const row of rows) for (const key of COUNTS) total[key] = Number(total[key]) + Number(row[key]);
  const table = [COLUMNS.map(([, label]) => label), ...[...rows, total].map((row) => COLUMNS.map(([key]) => String(row[key] ?? "")))];
  const widths = COLUMNS.map((_, i) => Math.max(...table.map((line) => line[i]!.length)));
  return table.map((line) => line.map((cell, i) => (i < 3 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join("  ")).join("\n");
}

export function registerUsageCommand(program: Command): void {
  program
    .command("usage")
    .description("A tenant's usage per day, channel and account: messages, deliveries by status, SMS segments, inbound, opt-outs.")
    .requiredOption("--tenant <slug>", "the tenant", slugArg)
    .option("--month <YYYY-MM>", "the UTC month (default: this one)", monthArg)
    .action(async (opts: { tenant: string; month?: string }) =>
      withDatabase(async ({ pool }) => {
        const tenant = await requireTenant(pool, opts.tenant);
        const month = opts.month ?? new Date().toISOString().slice(0, 7);
        const { rows, thisMonth } = await asAdmin(pool, async (client) => ({
          rows: await usageOf(client, tenant.id, month),
          thisMonth: (
            await client.query<{ messages: number; cap: number | null; remaining: number | null }>(
              "select (u).messages, (u).cap, (u).remaining from (select herald_public.tenants_usage_this_month(t) as u from herald_public.tenants t where t.id = $1) s",
              [tenant.id],
            )
          ).rows[0],
        }));
        print(`Usage of ${tenant.slug} in ${month} (UTC days; a delivery counts on its message's day)`);
        print(rows.length > 0 ? formatUsage(rows) : "Nothing sent or received that month.");
        if (thisMonth) {
          const cap = thisMonth.cap === null ? "no monthly cap" : `cap ${thisMonth.cap} (${thisMonth.remaining} left)`;
          print(`This month so far: ${thisMonth.messages} messages handed to a provider, ${cap}.`);
        }
      }),
    );
}
