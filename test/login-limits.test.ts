import { beforeAll, describe, expect, it } from "vitest";
import { useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";

/**
 * Password sign-in limits an attacker cannot turn against the account's
 * owner: wrong passwords from ever-changing addresses lock out only other
 * unknown addresses, never the owner's own. The client is X-Forwarded-For's,
 * since this server trusts its proxy (HERALD_TRUST_PROXY).
 */

const db = useTestDatabase();
const api = useApiServer(db, { env: () => ({ HERALD_TRUST_PROXY: "true" }) });
let a: TenantFixture;
let b: TenantFixture;

beforeAll(async () => {
  ({ a, b } = await seedTwoTenants(db.current));
});

const signIn = (email: string, password: string, from: string) =>
  fetch(`${api.current.url}/auth/login`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-forwarded-for": from },
    body: JSON.stringify({ email, password }),
  });

describe("password sign-in limits", () => {
  it("an attacker rotating addresses cannot lock the owner out of their own address; unknown addresses do get the slower curve", async () => {
    const email = `owner@${a.slug}.test`;
    const home = "198.51.100.7";
    expect((await signIn(email, `${a.slug}-password`, home)).status).toBe(200);

    // Far more than ten wrong passwords a minute, each from another address.
    const statuses: number[] = [];
    for (let i = 1; i <= 40; i++) statuses.push((await signIn(email, `guess-${i}`, `203.0.113.${i}`)).status);
    // The per-account curve for unknown addresses: 30 tries, then 429 (it drains 2 a minute, far slower than this loop).
    expect(statuses.slice(0, 25)).toEqual(Array(25).fill(401));
    expect(statuses.slice(-5)).toEqual(Array(5).fill(429));
    const refused = await signIn(email, `${a.slug}-password`, "192.0.2.99");
    expect(refused.status).toBe(429);
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);

    // The owner, from the address they signed in from before, still gets in.
    const owner = await signIn(email, `${a.slug}-password`, home);
    expect(owner.status).toBe(200);
    expect(((await owner.json()) as { tenant: { slug: string } }).tenant.slug).toBe(a.slug);
  });

  it("one address gets ten tries a minute per account, without holding up the same account elsewhere", async () => {
    const email = `owner@${b.slug}.test`;
    const home = "198.51.100.8";
    expect((await signIn(email, `${b.slug}-password`, home)).status).toBe(200);
    // Counts are per minute of the database's clock: start early in one, so that all eleven fall in it.
    const { rows } = await db.current.root.query<{ left: number }>(
      "select 60 - extract(second from clock_timestamp())::float8 as left",
    );
    if (rows[0]!.left < 20) await new Promise((r) => setTimeout(r, (rows[0]!.left + 0.5) * 1000));
    const statuses: number[] = [];
    for (let i = 0; i < 11; i++) statuses.push((await signIn(email, "not-the-password", "203.0.113.200")).status);
    expect(statuses).toEqual([...Array(10).fill(401), 429]);
    expect((await signIn(email, `${b.slug}-password`, home)).status).toBe(200);
  }, 60_000);
});
