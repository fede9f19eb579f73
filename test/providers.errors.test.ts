import { describe, expect, it } from "vitest";
import { CARRIER_OPT_OUT } from "../src/messages/carrier-opt-out.ts";
import {
  codeMeaning,
  PERMANENT_CODES,
  PROVIDER_CODES,
  RECIPIENT_CODES,
  SUPPRESSING_CODES,
  withoutAddresses,
} from "../src/providers/errors.ts";

/** The one table of provider error codes, and address redaction in provider messages. Pure: no database. */

describe("PROVIDER_CODES", () => {
  it.each(Object.entries(PROVIDER_CODES))("%s is consistent", (_code, meaning) => {
    // A recipient's fault fails the same way anywhere and any time: never retried.
    if (meaning.recipient) expect(meaning.permanent).toBe(true);
    // Only a permanent, recipient-level refusal says the recipient is gone for good.
    if (meaning.suppresses) expect(meaning).toMatchObject({ permanent: true, recipient: true });
    expect(meaning.reason.length).toBeGreaterThan(10);
  });

  it("lists the codes the engine and the transport act on, each with its properties", () => {
    const table = Object.fromEntries(
      Object.entries(PROVIDER_CODES).map(([code, m]) => [code, [m.permanent, m.recipient, m.suppresses]]),
    );
    expect(table).toEqual({
      "21211": [true, true, false],
      "21408": [true, false, false],
      "21610": [true, true, true],
      "21612": [true, true, false],
      "21614": [true, true, false],
      "30004": [true, true, false],
      "63007": [true, false, false],
      "131026": [true, true, false],
      "131047": [true, true, false],
      "190": [true, false, false],
      "63016": [true, true, false],
      NOT_OWN_SENDER: [true, false, false],
      NO_SENDER: [true, false, false],
    });
  });

  it("derives the sets from the table, so no list can disagree with it", () => {
    const where = (p: "permanent" | "recipient" | "suppresses") =>
      Object.keys(PROVIDER_CODES)
        .filter((c) => PROVIDER_CODES[c]![p])
        .sort();
    expect([...PERMANENT_CODES].sort()).toEqual(where("permanent"));
    expect([...RECIPIENT_CODES].sort()).toEqual(where("recipient"));
    // The one code that suppresses is the one the carrier opt-out is recorded for.
    expect([...SUPPRESSING_CODES]).toEqual([CARRIER_OPT_OUT]);
  });

  it("finds a code given as Twilio's number or as the string a delivery stores", () => {
    expect(codeMeaning(21211)).toBe(PROVIDER_CODES["21211"]);
    expect(codeMeaning("21211")).toBe(PROVIDER_CODES["21211"]);
    expect(codeMeaning(20429)).toBeUndefined();
    expect(codeMeaning(undefined)).toBeUndefined();
  });
});

describe("withoutAddresses", () => {
  /** The expression it used before (quadratic in a long run of letters): the scan must agree with it. */
  const before = (text: string) =>
    text
      .replace(/[^\s@'"<>()]+@[^\s@'"<>()]+\.[^\s@'"<>()]+/g, "[email]")
      .replace(/\+?\d[\d\s().-]{5,}\d/g, "[number]");

  it.each([
    "Does not contain a valid address: bob@example.com",
    "<ada@example.com>, 'grace@mail.example.org' and (x@y.z)",
    "a@b@c.d",
    "a@b.c@d.e",
    "@example.com and bob@ and bob@example and bob@.com and bob@example. and a@.b.c",
    "two@@example.com, last@x..y",
    "tab\tdelimited@example.com\nnext@example.com",
    "The 'To' number +1 (415) 555-0123 is not valid",
  ])("%j as the regular expression did", (text) => {
    expect(withoutAddresses(text)).toBe(before(text));
  });

  it("agrees with the regular expression on random texts", () => {
    const alphabet = "ab.@ 1-'(x";
    let seed = 19;
    const random = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
    for (let i = 0; i < 5000; i++) {
      const text = Array.from({ length: Math.floor(random() * 24) }, () => alphabet[Math.floor(random() * 10)]).join(
        "",
      );
      expect(withoutAddresses(text), JSON.stringify(text)).toBe(before(text));
    }
  });

  it("takes time linear in the text: 1 MB without a separator, and 1 MB of addresses", () => {
    // A complexity check with a wide margin: the expression took minutes on the first.
    for (const text of ["a".repeat(1 << 20), "ab.c@d.ef ".repeat(1 << 17), "1-".repeat(1 << 19)]) {
      const start = performance.now();
      withoutAddresses(text);
      expect(performance.now() - start).toBeLessThan(1_000);
    }
  });
});
