import { compile, type HtmlToTextOptions } from "html-to-text";

/**
 * The text part of an email given only HTML: what a mail client without HTML
 * shows, and what spam filters expect beside the HTML. html-to-text parses the
 * HTML (a real parser, not patterns): tags are dropped, entities decoded,
 * block elements (paragraphs, headings, list items, table rows, <br>) become
 * line breaks, links are kept as `text (url)` (the URL alone when the text is
 * the URL), images and the head's style and script are left out.
 *
 * Bounded: the input is at most the HTML column's 500,000 characters, and the
 * parser stops descending past 200 levels of nesting (the rest becomes "…");
 * no line wrapping, so a long line stays one line.
 */

const OPTIONS: HtmlToTextOptions = {
  wordwrap: false,
  limits: { maxInputLength: 500_000, maxDepth: 200, ellipsis: "…" },
  selectors: [
    { selector: "a", options: { linkBrackets: ["(", ")"], hideLinkHrefIfSameAsText: true, ignoreHref: false } },
    { selector: "img", format: "skip" },
    // Headings as written: upper-casing them would change what the sender wrote.
    ...(["h1", "h2", "h3", "h4", "h5", "h6"] as const).map((selector) => ({ selector, options: { uppercase: false } })),
    { selector: "table", format: "dataTable", options: { uppercaseHeaderCells: false } },
  ],
};

/** Compiled once: the selectors are not parsed again for every message. */
const convert = compile(OPTIONS);

/** The HTML as plain text (see above). */
export function htmlToText(html: string): string {
  return convert(html).trim();
}
