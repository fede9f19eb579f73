import { readFile } from "node:fs/promises";
import { getIntrospectionQuery } from "graphql";
import { beforeAll, expect, it } from "vitest";
import { EXECUTION_TIMEOUT_MS, MAX_ESTIMATED_NODES, MAX_FETCHED_BYTES } from "../src/api/limits.ts";
import { graphql, useApiProcess } from "./helpers/api.ts";
import { seedManyContacts } from "./helpers/bulk.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";

/**
 * A battery of amplification queries — nested connections with and without
 * `first`, aliases, fragments, variables, edges and nodes, wide rows,
 * introspection — sent all at once by one tenant with thousands of rows,
 * against the API in a process of its own. Each is refused with a code
 * naming a limit, or answered within the time budget; the process's peak
 * memory stays under a stated bound; and another tenant's trivial query keeps
 * being answered throughout, each time within a second (beyond what the idle
 * server takes on this machine, measured first).
 */

const CONTACTS = 3000;
/** Attributes per contact: a page of 1,000 of them is over the data budget, though only 1,000 nodes. */
const WIDE_ROW_BYTES = Math.ceil((MAX_FETCHED_BYTES * 1.25) / 1000);
/** Nested page sizes that put an operation exactly at the node limit: 1,000 + 1,000 × 1 + 1,000 × 1 × n. */
const AT_LIMIT_INNER = (MAX_ESTIMATED_NODES - 2000) / 1000;
const ALIASES_WITHIN = Math.floor(MAX_ESTIMATED_NODES / 1000);
/** Peak resident memory the API process may reach during the battery (it starts near 200 MiB). */
const RSS_BOUND_MIB = 900;
/** Each request's answer (or refusal) within the execution budget plus slack for a loaded 2-core machine. */
const ANSWER_WITHIN_MS = EXECUTION_TIMEOUT_MS + 5_000;

const db = useTestDatabase();
const api = useApiProcess(db);
let heavy: TenantFixture;
let other: TenantFixture;

beforeAll(async () => {
  ({ a: heavy, b: other } = await seedTwoTenants(db.current));
  await seedManyContacts(db.current, heavy.id, { contacts: CONTACTS, attributeBytes: WIDE_ROW_BYTES });
});

const aliases = (count: number, field: string) => Array.from({ length: count }, (_, i) => `a${i}: ${field}`).join(" ");

const BATTERY: Array<{ name: string; query: string; variables?: Record<string, unknown> }> = [
  {
    name: "the issue's nested lists without first",
    query: `{ allContacts { nodes { listMemberships { nodes { list { members { nodes { contact { firstName } } } } } } } } }`,
  },
  {
    name: "first: 1000 three levels deep",
    query: `{ allContacts(first: 1000) { nodes { contactTags(first: 1000) { nodes { tag { contactTags(first: 1000) { nodes { contact { firstName } } } } } } } } }`,
  },
  {
    name: "nested connections at the node limit",
    query: `{ allContacts(first: 1000) { nodes { listMemberships(first: 1) { nodes { list { members(first: ${AT_LIMIT_INNER}) { nodes { contact { firstName lastName } } } } } } } } }`,
  },
  {
    name: "aliases within the node limit",
    query: `{ ${aliases(ALIASES_WITHIN, "allContacts(first: 1000) { nodes { rowId firstName } }")} }`,
  },
  {
    name: "60 aliases of a page of 1,000",
    query: `{ ${aliases(60, "allContacts(first: 1000) { nodes { rowId } }")} }`,
  },
  {
    name: "fragments spread inside fragments",
    query: `{ allContacts(first: 1000) { ...P } } fragment P on ContactConnection { nodes { ...M } edges { node { ...M } } }
            fragment M on Contact { listMemberships { nodes { list { members(first: 1000) { nodes { rowId } } } } } }`,
  },
  {
    name: "edges and nodes, page sizes in variables",
    query: `query($n: Int, $m: Int) { allContacts(first: $n) { edges { cursor node { contactTags(first: $m) { edges { node { tag { name } } } } } } } }`,
    variables: { n: 1000, m: 1000 },
  },
  { name: "wide rows: 1,000 contacts' attributes", query: `{ allContacts(first: 1000) { nodes { attributes } } }` },
  {
    name: "a plain page of 1,000",
    query: `{ allContacts(first: 1000) { totalCount nodes { rowId firstName lastName createdAt } } }`,
  },
  { name: "introspection", query: getIntrospectionQuery({ descriptions: true }) },
];

const LIMIT_CODES = new Set([
  "NODE_LIMIT_EXCEEDED",
  "RESPONSE_TOO_LARGE",
  "EXECUTION_TIMEOUT",
  "TOO_MANY_CONCURRENT_REQUESTS",
  "SERVER_BUSY",
  "OPERATION_TOO_COSTLY",
]);

/**
 * Milliseconds the API process's main thread has spent runnable but waiting
 * for a CPU (Linux schedstat's run delay), or undefined where the kernel does
 * not say.
 */
async function runQueueDelayMs(pid: number): Promise<number | undefined> {
  const schedstat = await readFile(`/proc/${pid}/schedstat`, "utf8").catch(() => undefined);
  const nanoseconds = Number(schedstat?.split(" ")[1]);
  return Number.isFinite(nanoseconds) ? nanoseconds / 1e6 : undefined;
}

/**
 * Above this share of the battery's time spent waiting for a CPU, the
 * machine (other processes competing for its cores), not the API process's
 * own work, decides how long a request waits: the one-second bound per request
 * cannot be asked of Herald then.
 */
const CONTENDED_CPU_SHARE = 0.5;

async function peakRssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kib = Number(/^VmHWM:\s+(\d+) kB/m.exec(status)?.[1]);
  return kib / 1024;
}

it("refuses or answers every amplification query within budget, under the memory bound, while another tenant is served", async () => {
  const before = await peakRssMiB(api.current.pid);
  const trivialQuery = async () => {
    const started = performance.now();
    const { body } = await graphql(
      api.current,
      other.apiKeySecret,
      `
        {
          currentTenant {
            name
          }
        }
      `,
    );
    expect(body.errors).toBeUndefined();
    expect(body.data!.currentTenant.name).toBe("Tenant B");
    return performance.now() - started;
  };
  // The other tenant's query on the idle server first (once to plan it, then
  // measured): what this machine gives it anyway.
  await trivialQuery();
  const idleLatencies: number[] = [];
  for (let i = 0; i < 8; i++) idleLatencies.push(await trivialQuery());
  // Then over and over while the battery runs.
  const batteryStarted = { ms: performance.now(), delay: await runQueueDelayMs(api.current.pid) };
  let batteryDone = false;
  const otherLatencies: number[] = [];
  const otherTenant = (async () => {
    while (!batteryDone || otherLatencies.length < 5) {
      otherLatencies.push(await trivialQuery());
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  })();

  // The battery twice over, all at once: more than the tenant may run at a time.
  const outcomes = await Promise.all(
    [...BATTERY, ...BATTERY].map(async ({ name, query, variables }) => {
      const started = performance.now();
      const response = await fetch(`${api.current.url}/graphql`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${heavy.apiKeySecret}` },
        body: JSON.stringify({ query, variables }),
      });
      const text = await response.text();
      const body = JSON.parse(text) as {
        data?: unknown;
        errors?: Array<{ extensions?: { code?: string } }>;
        error?: { code: string };
      };
      const code = body.error?.code ?? body.errors?.[0]?.extensions?.code;
      return {
        name,
        status: response.status,
        ms: performance.now() - started,
        bytes: text.length,
        code,
        answered: body.data != null && !body.errors,
      };
    }),
  );
  batteryDone = true;
  await otherTenant;
  const delayEnd = await runQueueDelayMs(api.current.pid);
  const cpuWaitShare =
    delayEnd === undefined || batteryStarted.delay === undefined
      ? 0
      : (delayEnd - batteryStarted.delay) / (performance.now() - batteryStarted.ms);
  const after = await peakRssMiB(api.current.pid);
  console.info({
    rssMiB: { before: Math.round(before), peak: Math.round(after) },
    apiWaitedForCpu: Math.round(cpuWaitShare * 100) / 100,
    idleMs: idleLatencies.map(Math.round),
    otherMs: otherLatencies.map(Math.round),
    outcomes,
  });

  for (const outcome of outcomes) {
    expect(outcome.ms, outcome.name).toBeLessThan(ANSWER_WITHIN_MS);
    if (!outcome.answered) expect(LIMIT_CODES, `${outcome.name}: ${outcome.code}`).toContain(outcome.code);
  }
  const byName = (name: string) => outcomes.filter((outcome) => outcome.name === name);
  // What must be refused was refused, each time, for the right reason.
  for (const name of [
    "the issue's nested lists without first",
    "first: 1000 three levels deep",
    "60 aliases of a page of 1,000",
    "fragments spread inside fragments",
    "edges and nodes, page sizes in variables",
  ]) {
    for (const outcome of byName(name))
      expect(["NODE_LIMIT_EXCEEDED", "TOO_MANY_CONCURRENT_REQUESTS"], name).toContain(outcome.code);
  }
  for (const outcome of byName("wide rows: 1,000 contacts' attributes")) {
    expect(["RESPONSE_TOO_LARGE", "TOO_MANY_CONCURRENT_REQUESTS"]).toContain(outcome.code);
  }
  // One tenant cannot have more than its share running: some of its requests waited their turn, none of the other's.
  expect(outcomes.some((outcome) => outcome.answered)).toBe(true);
  expect(after).toBeLessThan(RSS_BOUND_MIB);
  // The other tenant is answered throughout, every time within a second beyond
  // the slowest answer the idle server gave it on this machine. Only when the
  // machine's other processes keep the API process off the CPUs (it waited for
  // one more than half the battery's time, as the kernel counts it, printed
  // above) does the bound fall back to: half the answers within that second,
  // and none held for as long as a heavy request may run.
  const idle = Math.max(...idleLatencies);
  const contended = cpuWaitShare > CONTENDED_CPU_SHARE;
  const sorted = [...otherLatencies].sort((x, y) => x - y);
  if (contended) expect(sorted[Math.floor(sorted.length / 2)]!).toBeLessThan(1000 + idle);
  for (const [i, ms] of otherLatencies.entries()) {
    expect(ms, `the other tenant's query #${i} (idle: ${Math.round(idle)} ms)`).toBeLessThan(
      contended ? EXECUTION_TIMEOUT_MS : 1000 + idle,
    );
  }
}, 60_000);
