/**
 * What makes reading and writing CSV safe with hostile input: checks that run
 * in linear time on cells of any length, and cells written so that a
 * spreadsheet never evaluates them as formulas.
 */

/**
 * Longest cell the import accepts (any column: names and ids are limited to
 * 200 characters further on, attributes only here). A longer one rejects its
 * row before any other check looks at it.
 */
export const MAX_CELL_CHARS = 10_000;

/**
 * Longest record (all its cells) the CSV parser buffers. Past it the file is
 * refused where it is — a record that size is no contact row, and the parser
 * cannot skip it without holding it whole — so memory stays bounded.
 */
export const MAX_RECORD_CHARS = 4 * 1024 * 1024;

/**
 * Whether `text` holds something shaped like an email address anywhere
 * (`x@y.z`: non-blank, non-@ characters around an @, and a dot with a
 * character either side after it). Equivalent to testing
 * /[^\s@]+@[^\s@]+\.[^\s@]+/, but linear: that regex backtracks over every
 * start position of a long run without an @ (quadratic: 100 KB took 10 s).
 */
export function containsEmailLike(text: string): boolean {
  if (!text.includes("@")) return false;
  for (const word of text.split(/\s+/)) {
    const parts = word.split("@");
    for (let k = 0; k + 1 < parts.length; k++) {
      const local = parts[k]!;
      const domain = parts[k + 1]!;
      const dot = domain.indexOf(".", 1);
      if (local !== "" && dot !== -1 && dot < domain.length - 1) return true;
    }
  }
  return false;
}

/**
 * Characters that make a spreadsheet read a cell as a formula (OWASP, "CSV
 * Injection"): `=`, `+`, `-`, `@`, and tab or carriage return before them.
 */
const FORMULA_START = /^[=+\-@\t\r]/;

/**
 * One CSV cell as Herald writes it. A text starting like a formula gets a
 * single quote in front (OWASP's recommendation; spreadsheets then show it as
 * text), so `+14155550101` is written `'+14155550101`; `withoutFormulaGuard`
 * is the inverse Herald's import applies. Cells holding a quote, a line break
 * or a separator (`,`, or `;` where a locale uses it) are quoted.
 */
export function csvCell(value: string | number): string {
  if (typeof value === "number") return String(value);
  const text = FORMULA_START.test(value) ? `'${value}` : value;
  return /[",;\n\r\t]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

export const csvLine = (cells: (string | number)[]) => `${cells.map(csvCell).join(",")}\n`;

/**
 * A cell read back: the single quote `csvCell` (or a spreadsheet user, typing
 * `'+1 415…` so that the plus is kept) puts before a formula-like text is
 * dropped, so such a file imports as the values it shows.
 */
export function withoutFormulaGuard(text: string): string {
  return text.length > 1 && text[0] === "'" && FORMULA_START.test(text.slice(1, 2)) ? text.slice(1) : text;
}
