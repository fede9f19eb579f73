import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { ROLES } from "../src/db/urls.ts";
import { escapeHtml } from "../src/html.ts";
import { parseTemplate, render, type RenderContact } from "../src/messages/render.ts";
import { asRole, expectPgError, useTestDatabase, type RequestRole } from "./helpers/db.ts";

/**
 * One template grammar, two parsers: herald_hidden.template_variables decides
 * when a text is saved whether it is valid and which variables it uses;
 * src/messages/render.ts fills them in at send time. Every case of the shared
 * table runs against both, so a change to either that the other lacks fails here.
 */

interface GrammarCase {
  text: string;
  note?: string;
  /** A valid text: its variables (sorted) and how it renders for the table's contact. */
  variables?: string[];
  rendered?: string;
  /** How it renders in an email's HTML part (values escaped). */
  renderedHtml?: string;
  /** An invalid one: why. */
  error?: "unknown_variable" | "unclosed";
}

const table = JSON.parse(readFileSync(new URL("./fixtures/template-grammar.json", import.meta.url), "utf8")) as {
  contact: RenderContact;
  cases: GrammarCase[];
};
const label = (c: GrammarCase) => JSON.stringify(c.text) + (c.note ? ` (${c.note})` : "");
const SQL_ERRORS = { unknown_variable: /^Unknown template variable/, unclosed: /^Unclosed/ };

describe("render.ts", () => {
  it.each(table.cases.map((c) => [label(c), c] as const))("%s", (_label, c) => {
    const parsed = parseTemplate(c.text);
    if (c.error) {
      expect(parsed).toMatchObject({ ok: false, error: c.error });
      // Saving refuses such a text; one that skipped that check is not guessed at.
      if (c.error === "unknown_variable") expect(render(c.text, table.contact)).toBe(c.text);
    } else {
      expect(parsed).toEqual({ ok: true, variables: c.variables });
      expect(render(c.text, table.contact)).toBe(c.rendered);
      if (c.renderedHtml !== undefined) expect(render(c.text, table.contact, escapeHtml)).toBe(c.renderedHtml);
    }
  });
});

describe("herald_hidden.template_variables", () => {
  const db = useTestDatabase();
  const roles: RequestRole[] = [ROLES.member, ROLES.worker];
  it.each(roles)("as %s", async (role) => {
    await asRole(db.current, { role }, async (client) => {
      for (const c of table.cases) {
        let variables: string[] | undefined;
        const error = await expectPgError(client, async () => {
          const { rows } = await client.query<{ v: string[] }>(
            "select herald_hidden.template_variables($1, 'body') as v",
            [c.text],
          );
          variables = rows[0]!.v;
        });
        if (c.error) {
          expect(error, label(c)).toMatchObject({ code: "22023", message: expect.stringMatching(SQL_ERRORS[c.error]) });
        } else {
          expect(error, label(c)).toBeUndefined();
          // The database sorts by its collation; the table, by code point.
          expect([...variables!].sort(), label(c)).toEqual(c.variables);
        }
      }
    });
  });
});
