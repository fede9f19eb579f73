import fs from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { projectRoot } from "../src/paths.ts";

/**
 * The docs stand on their own: every relative link in README.md and docs/*.md
 * reaches a file of the repository (and, for `file.md#part`, a heading of
 * it), and nothing cites design or style notes that are not in it.
 */

const docs = ["README.md", ...fs.readdirSync(path.join(projectRoot, "docs")).map((f) => `docs/${f}`)].filter((f) =>
  f.endsWith(".md"),
);

/** Markdown links outside code: `[text](target)`, with fenced blocks and inline code removed first. */
function linksOf(markdown: string): string[] {
  const prose = markdown.replace(/```[\s\S]*?```/g, "").replace(/`[^`\n]*`/g, "");
  return [...prose.matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)].map((m) => m[1]!);
}

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens. */
const anchorOf = (heading: string) =>
  heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, "")
    .replace(/\s/g, "-");

const anchorsIn = (file: string) =>
  new Set(
    fs
      .readFileSync(file, "utf8")
      .replace(/```[\s\S]*?```/g, "")
      .split("\n")
      .filter((line) => /^#{1,6}\s/.test(line))
      .map((line) => anchorOf(line.replace(/^#+\s/, ""))),
  );

describe("the documentation", () => {
  it.each(docs)("%s: every relative link resolves", (doc) => {
    const from = path.join(projectRoot, doc);
    const broken: string[] = [];
    for (const link of linksOf(fs.readFileSync(from, "utf8"))) {
      if (/^[a-z][a-z+.-]*:/i.test(link)) continue; // https:, mailto: …
      const [target = "", fragment] = link.split("#");
      const file = target === "" ? from : path.resolve(path.dirname(from), decodeURIComponent(target));
      if (!file.startsWith(projectRoot + path.sep) || !fs.existsSync(file)) broken.push(`${link}: no such file`);
      else if (fragment && file.endsWith(".md") && !anchorsIn(file).has(fragment))
        broken.push(`${link}: no such heading`);
    }
    expect(broken).toEqual([]);
  });

  it("finds the links it checks (a link to a missing file is reported)", () => {
    expect(linksOf("see [a](docs/a.md), `[b](b.md)` and [c](https://example.com)")).toEqual([
      "docs/a.md",
      "https://example.com",
    ]);
    expect(anchorOf("Troubleshooting the first start")).toBe("troubleshooting-the-first-start");
  });

  it("no code or doc cites design or style notes that are not in the repository", () => {
    const citing: string[] = [];
    const skip = new Set(["node_modules", ".git", ".data", path.join("migrations", "committed")]);
    const walk = (dir: string) => {
      for (const entry of fs.readdirSync(path.join(projectRoot, dir), { withFileTypes: true })) {
        const relative = path.join(dir, entry.name);
        if (skip.has(relative)) continue;
        if (entry.isDirectory()) walk(relative);
        else if (/\.(ts|js|md|sql|json|sh|graphql)$/.test(entry.name) && relative !== "test/docs.links.test.ts") {
          if (/\b(DESIGN|STYLE)\.md\b/.test(fs.readFileSync(path.join(projectRoot, relative), "utf8")))
            citing.push(relative);
        }
      }
    };
    walk("");
    expect(citing).toEqual([]);
  });
});
