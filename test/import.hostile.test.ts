import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { containsEmailLike, csvCell, MAX_RECORD_CHARS, withoutFormulaGuard } from "../src/contacts/csv-safety.ts";
import { importContacts } from "../src/contacts/import.ts";
import { useTestDatabase, withRootDb } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";
import { testKeyring } from "./helpers/keys.ts";

/**
 * `herald contacts import` against hostile files: cells built to make a
 * backtracking regex take quadratic time, rows too large to hold, and header
 * text that a spreadsheet would run as a formula once written to the rejects file.
 */

const db = useTestDatabase();
let a: TenantFixture;
let dir: string;

beforeAll(async () => {
  ({ a } = await seedTwoTenants(db.current));
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "herald-import-hostile-"));
});

/**
 * Milliseconds of CPU this process spends in `fn`: what a slow regex burns,
 * and what the neighbours of a shared machine (whose load stretches wall time)
 * do not change.
 */
async function cpuMs<T>(fn: () => Promise<T>): Promise<{ result: T; ms: number }> {
  const before = process.cpuUsage();
  const result = await fn();
  const spent = process.cpuUsage(before);
  return { result, ms: (spent.user + spent.system) / 1000 };
}

const importFile = (name: string, content: string) => {
  const file = path.join(dir, `${name}.csv`);
  fs.writeFileSync(file, content);
  const rejectsFile = path.join(dir, `${name}.rejects.csv`);
  return {
    rejectsFile,
    run: () =>
      importContacts({ pool: db.current.authenticator, keyring: testKeyring(), tenantId: a.id, file, rejectsFile }),
    rejects: () => fs.readFileSync(rejectsFile, "utf8").trim().split("\n"),
  };
};

describe("cells built for a slow regex", () => {
  it("a 100 KB attribute cell is rejected by its size at once, and the next row is imported", async () => {
    const { run, rejects } = importFile(
      "wide100k",
      `phone,first_name,notes\n+14155550181,Wide,${"a".repeat(100_000)}\n+14155550182,Next,ok\n`,
    );
    const { result: summary, ms } = await cpuMs(run);
    expect(summary).toMatchObject({ rows: 2, inserted: 1, rejected: 1 });
    expect(rejects()).toEqual([
      "line,column,reason",
      '2,notes,"is 100,000 characters long; a cell may hold at most 10,000"',
    ]);
    // The regex this replaces spent ~10 s of CPU on such a cell; the whole import takes a small fraction of a second.
    expect(ms).toBeLessThan(1000);
  });

  it("a 1 MB cell is handled within a second and rejected with a clear reason", async () => {
    const { run, rejects } = importFile("wide1m", `phone,notes\n+14155550183,${"b".repeat(1_000_000)}\n`);
    const { result: summary, ms } = await cpuMs(run);
    expect(ms).toBeLessThan(1000);
    expect(summary).toMatchObject({ rows: 1, inserted: 0, rejected: 1 });
    expect(rejects()[1]).toBe('2,notes,"is 1,000,000 characters long; a cell may hold at most 10,000"');
  });

  it("a row past the parser's limit stops the import with CSV_MAX_RECORD_SIZE, after the rows before it", async () => {
    const { run } = importFile(
      "huge",
      `phone,first_name,notes\n+14155550184,BeforeHuge,x\n+14155550185,Huge,"${"c".repeat(MAX_RECORD_CHARS + 10)}"\n`,
    );
    await expect(run()).rejects.toMatchObject({ code: "CSV_MAX_RECORD_SIZE", lines: 3 });
    const stored = await withRootDb(
      db.current,
      async (c) =>
        (
          await c.query(
            "select first_name from herald_public.contacts where tenant_id = $1 and first_name in ('BeforeHuge', 'Huge')",
            [a.id],
          )
        ).rows,
    );
    expect(stored).toEqual([{ first_name: "BeforeHuge" }]);
  });

  it("refuses a column name longer than 200 characters", async () => {
    const { run } = importFile("longheader", `phone,${"h".repeat(5000)}\n+14155550186,x\n`);
    await expect(run()).rejects.toThrow(/column 2's name is 5,000 characters long; a column name may have at most 200/);
  });

  it("finds an email at the end of a cell at the size limit", async () => {
    const { run, rejects } = importFile("edge", `phone,notes\n+14155550187,${"d".repeat(9_980)} ask x@y.example\n`);
    expect(await run()).toMatchObject({ inserted: 0, rejected: 1 });
    expect(rejects()[1]).toBe('2,notes,"holds an email address; attributes are stored unencrypted"');
  });

  it("containsEmailLike answers as /[^\\s@]+@[^\\s@]+\\.[^\\s@]+/ does, in linear time", async () => {
    const regex = /[^\s@]+@[^\s@]+\.[^\s@]+/;
    const samples = [
      "",
      "@",
      "a@b",
      "a@b.",
      "a@.b",
      "a@b.c",
      "a@bc.d",
      " a@b.c ",
      "a @b.c",
      "a@ b.c",
      "a@@b.c",
      "@a@b.c",
      "x@y@z.w",
      "a@b.c@",
      "ask zed@elsewhere.example",
      "a.b@c",
      "a.b@c.",
      "..@..",
      "a@..",
      "a@...",
      "a@.b.c",
      "mail:x@y.z!",
      "a\t@b.c",
      "a@b\u00a0.c",
      "a@b\n.c",
      "x@y.z\nq",
      "name@domain",
      "foo@bar.baz qux",
      "@@@...",
      "a@b.c.d",
    ];
    for (const sample of samples) expect([sample, containsEmailLike(sample)]).toEqual([sample, regex.test(sample)]);
    const { ms } = await cpuMs(async () => {
      expect(containsEmailLike("e".repeat(1_000_000) + "@" + "f".repeat(1_000_000))).toBe(false);
      expect(containsEmailLike("@".repeat(1_000_000))).toBe(false);
    });
    expect(ms).toBeLessThan(1000);
  });
});

describe("formula injection", () => {
  it("cells that start like a formula are written with a leading single quote, and read back without it", () => {
    expect(["=1+2", "+14155550101", "-2", "@SUM(A1)", "\tx", "\r=x", "plain", "a=b", "'=x"].map(csvCell)).toEqual([
      "'=1+2",
      "'+14155550101",
      "'-2",
      "'@SUM(A1)",
      '"\'\tx"',
      '"\'\r=x"',
      "plain",
      "a=b",
      "'=x",
    ]);
    expect(csvCell(-1)).toBe("-1"); // numbers Herald writes (line numbers) are data, not text
    expect(csvCell('a,"b";c')).toBe('"a,""b"";c"');
    expect(["'+14155550101", "'=1+2", "'plain", "'", "+1"].map(withoutFormulaGuard)).toEqual([
      "+14155550101",
      "=1+2",
      "'plain",
      "'",
      "+1",
    ]);
  });

  it("the rejects file neutralises the file's own header text", async () => {
    const { run, rejects } = importFile(
      "formulas",
      [
        'phone,"=HYPERLINK(""http://evil.example"")",+cmd,-2+3,@SUM(A1)',
        "+14155550188,see a@b.example,,,",
        "+14155550189,,x@y.example,,",
        "+14155550190,,,z@w.example,",
        "+14155550191,,,,v@u.example",
      ].join("\n"),
    );
    expect(await run()).toMatchObject({ rows: 4, inserted: 0, rejected: 4 });
    const reason = '"holds an email address; attributes are stored unencrypted"';
    expect(rejects()).toEqual([
      "line,column,reason",
      `2,"'=HYPERLINK(""http://evil.example"")",${reason}`,
      `3,'+cmd,${reason}`,
      `4,'-2+3,${reason}`,
      `5,'@SUM(A1),${reason}`,
    ]);
    for (const line of rejects()) for (const cell of line.split(",")) expect(cell).not.toMatch(/^"?[=+\-@\t\r]/);
  });

  it("a value a spreadsheet user guarded with a single quote imports as the value", async () => {
    const { run } = importFile("guarded", "phone,first_name,formula\n'+14155550192,Guarded,'=1+2\n");
    expect(await run()).toMatchObject({ inserted: 1, rejected: 0 });
    const stored = await withRootDb(
      db.current,
      async (c) =>
        (
          await c.query(
            "select attributes from herald_public.contacts where tenant_id = $1 and first_name = 'Guarded'",
            [a.id],
          )
        ).rows,
    );
    expect(stored).toEqual([{ attributes: { formula: "=1+2" } }]);
    // The phone is the number without the quote: the same row is found by it.
    const again = importFile("guarded-again", "phone,first_name\n+14155550192,Guarded\n");
    expect(await again.run()).toMatchObject({ inserted: 0, unchanged: 1 });
  });
});
