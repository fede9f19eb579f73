import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import type pg from "pg";
import { withSession } from "../db/session.ts";
import { ROLES } from "../db/urls.ts";
import { print, requireTenant, slugArg, withDatabase } from "./shared.ts";

/** `herald usage --tenant <slug> [--month YYYY-MM]`: a tenant's daily usage (herald_public.usage) as a table. */

const monthArg = (value: string) => {
  if (!/^\d{4}-(0[1-9]|1[0-2])$/.test(value)) throw new InvalidArgumentError("use YYYY-MM, e.g. 2026-12");
  return value;
};

const COLUMNS = [
  ["day", "day"],
  ["channel", "channel"],
  ["account", "account"],
  ["messages", "messages"],
  // Deliveries by status: the statuses add up to `deliveries`.
  ["deliveries", "deliveries"],
  ["queued", "queued"],
  ["sending", "sending"],
  ["sent", "sent"],
  ["delivered", "delivered"],
  ["undelivered", "undelivered"],
  ["failed", "failed"],
  ["skipped", "skipped"],
  ["canceled", "canceled"],
  ["unknown", "unknown"],
  ["segments", "segments"],
  ["inbound", "inbound"],
  ["opt_outs", "opt-outs"],
] as const;
const COUNTS = COLUMNS.slice(3).map(([key]) => key);

type UsageRow = Record<(typeof COLUMNS)[number][0], string | number | null>;

/** The session tenant's usage in a month, and how many messages (send requests) it made in it. */
async function usageOf(client: pg.ClientBase, month: string): Promise<{ rows: UsageRow[]; messages: number }> {
  const { rows } = await client.query<UsageRow>(
    `select to_char(day, 'YYYY-MM-DD') as day, channel, coalesce(account, '-') as account, ${COUNTS.join(", ")}
       from herald_public.usage($1::date, ($1::date + interval '1 month' - interval '1 day')::date)`,
    [`${month}-01`],
  );
  const {
    rows: [count],
  } = await client.query<{ n: number }>(
    `select count(*)::int as n from herald_public.messages
      where tenant_id = herald_public.current_tenant_id()
        and created_at >= ($1::date::timestamp at time zone 'UTC') and created_at < (($1::date + interval '1 month')::timestamp at time zone 'UTC')`,
    [`${month}-01`],
  );
  return { rows, messages: count!.n };
}

/** A message whose deliveries took several routes is in several rows: its total is counted, not summed. */
export function formatUsage(rows: UsageRow[], messages: number): string {
  const total: UsageRow = Object.fromEntries(
    COLUMNS.map(([key]) => [key, COUNTS.includes(key as never) ? 0 : ""]),
  ) as UsageRow;
  total.day = "total";
  for (const row of rows) for (const key of COUNTS) total[key] = Number(total[key]) + Number(row[key]);
  total.messages = messages;
  const table = [
    COLUMNS.map(([, label]) => label),
    ...[...rows, total].map((row) => COLUMNS.map(([key]) => String(row[key] ?? ""))),
  ];
  const widths = COLUMNS.map((_, i) => Math.max(...table.map((line) => line[i]!.length)));
  return table
    .map((line) => line.map((cell, i) => (i < 3 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join("  "))
    .join("\n");
}

export function registerUsageCommand(program: Command): void {
  program
    .command("usage")
    .description(
      "A tenant's usage per day, channel and account: messages, deliveries by status, SMS segments, inbound, opt-outs; then the deliveries handed to a provider this month, which the monthly cap counts.",
    )
    .requiredOption("--tenant <slug>", "the tenant", slugArg)
    .option("--month <YYYY-MM>", "the UTC month (default: this one)", monthArg)
    .action(async (opts: { tenant: string; month?: string }) =>
      withDatabase(async ({ pool }) => {
        const tenant = await requireTenant(pool, opts.tenant);
        const month = opts.month ?? new Date().toISOString().slice(0, 7);
        // As an operator inside the tenant: the usage function reads the session's tenant.
        const { usage, engagement, thisMonth } = await withSession(
          pool,
          { role: ROLES.admin, tenantId: tenant.id },
          async (client) => ({
            usage: await usageOf(client, month),
            // Opens and clicks of the month's email (migration 000012).
            engagement: (
              await client.query<{ opens: number; clicks: number }>(
                `select coalesce(sum(opens), 0)::int as opens, coalesce(sum(clicks), 0)::int as clicks
                   from herald_public.engagement_usage($1::date, ($1::date + interval '1 month' - interval '1 day')::date)`,
                [`${month}-01`],
              )
            ).rows[0]!,
            thisMonth: (
              await client.query<{ messages: number; cap: number | null; remaining: number | null }>(
                "select (u).messages, (u).cap, (u).remaining from (select herald_public.tenants_usage_this_month(t) as u from herald_public.tenants t where t.id = $1) s",
                [tenant.id],
              )
            ).rows[0],
          }),
        );
        print(`Usage of ${tenant.slug} in ${month} (UTC days; a delivery counts on its message's day)`);
        print(usage.rows.length > 0 ? formatUsage(usage.rows, usage.messages) : "Nothing sent or received that month.");
        if (engagement.opens + engagement.clicks > 0)
          print(
            `Email engagement: ${engagement.opens} opens, ${engagement.clicks} clicks (SendGrid events, each counted once).`,
          );
        if (thisMonth) {
          // The cap counts deliveries (one per recipient), not messages (send requests).
          const cap =
            thisMonth.cap === null ? "no monthly cap" : `monthly cap ${thisMonth.cap} (${thisMonth.remaining} left)`;
          print(`This month so far: ${thisMonth.messages} deliveries handed to a provider, against the ${cap}.`);
        }
      }),
    );
}
