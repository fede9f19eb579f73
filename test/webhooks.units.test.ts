import { afterEach, describe, expect, it, vi } from "vitest";
import { withoutAddresses } from "../src/providers/errors.ts";
import { classifyKeyword } from "../src/provider-callbacks/keywords.ts";
import { TtlCache } from "../src/provider-callbacks/tenant.ts";

/** The webhooks' pure parts: keyword classification, the credential cache, address redaction. */

describe("classifyKeyword", () => {
  it.each([
    ["STOP", "stop", "STOP"],
    ["stop all", "stop", "STOP"],
    ["Stop-All!", "stop", "STOP"],
    ["STOPALL", "stop", "STOPALL"],
    ["un subscribe", "stop", "UNSUBSCRIBE"],
    ["please cancel", "stop", "CANCEL"],
    ["QUIT IT", "stop", "QUIT"],
    ["opt out", "stop", "OPTOUT"],
    ["yes please", "start", "YES"],
    ["UNSTOP", "start", "UNSTOP"],
    ["info", "help", "INFO"],
  ])("%j is %s (%s)", (body, kind, word) => {
    expect(classifyKeyword(body)).toEqual({ kind, word });
  });

  it.each([
    "",
    "   ",
    "!!!",
    "please",
    "stop by later",
    "don't stop",
    "stop stop stop stop stop stop stop",
    "I want help with my booking",
    "stopped",
    "helping",
  ])("%j is no keyword", (body) => {
    expect(classifyKeyword(body)).toBeNull();
  });
});

describe("TtlCache", () => {
  afterEach(() => vi.useRealTimers());

  it("keeps a value for its lifetime, then loads it again", async () => {
    vi.useFakeTimers();
    const cache = new TtlCache<number>(10_000);
    let loads = 0;
    const load = async () => ++loads;
    expect(await cache.get("k", load)).toBe(1);
    vi.advanceTimersByTime(9_000);
    expect(await cache.get("k", load)).toBe(1);
    vi.advanceTimersByTime(2_000);
    expect(await cache.get("k", load)).toBe(2);
  });

  it("reloads on request at most once a second per key", async () => {
    vi.useFakeTimers();
    const cache = new TtlCache<number>(10_000);
    let loads = 0;
    const load = async () => ++loads;
    await cache.get("k", load);
    vi.advanceTimersByTime(500);
    expect(await cache.get("k", load, { refresh: true })).toBe(1);
    vi.advanceTimersByTime(600);
    expect(await cache.get("k", load, { refresh: true })).toBe(2);
  });

  it("does not remember a failed load", async () => {
    const cache = new TtlCache<number>(10_000);
    await expect(cache.get("k", async () => Promise.reject(new Error("down")))).rejects.toThrow("down");
    await new Promise((r) => setTimeout(r, 0));
    expect(await cache.get("k", async () => 7)).toBe(7);
  });

  it("holds at most its maximum, dropping the oldest loads", async () => {
    const cache = new TtlCache<string>(60_000, 100);
    for (let i = 0; i < 1_000; i++) await cache.get(`number-${i}`, async () => `owner-${i}`);
    expect(cache.size).toBe(100);
    let reloaded = false;
    await cache.get("number-0", async () => ((reloaded = true), "again"));
    expect(reloaded).toBe(true);
    expect(await cache.get("number-999", async () => "not loaded")).toBe("owner-999");
  });
});

describe("withoutAddresses", () => {
  it("removes the phone numbers and emails a provider's message quotes", () => {
    expect(withoutAddresses("The 'To' number +14155550123 is not a valid phone number.")).toBe(
      "The 'To' number [number] is not a valid phone number.",
    );
    expect(withoutAddresses("Invalid To: +1 (415) 555-0123")).toBe("Invalid To: [number]");
    expect(withoutAddresses("Does not contain a valid address: bob@example.com")).toBe(
      "Does not contain a valid address: [email]",
    );
    expect(withoutAddresses("Authenticate (20003)")).toBe("Authenticate (20003)");
  });
});
