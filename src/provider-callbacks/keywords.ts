/**
 * Whether an inbound text is a compliance keyword: the opt-out family (the
 * words Twilio honours on long codes), opt-in, or help. Matching ignores case,
 * spacing and punctuation ("Stop.", "s t o p", "opt-out"), and a few words of
 * politeness around the keyword ("stop please", "please stop texting me");
 * anything else is an ordinary message, so "can you stop by at 5?" or "don't
 * stop the reminders" change nothing.
 */

export type KeywordKind = "stop" | "start" | "help";

const FAMILIES: Record<KeywordKind, readonly string[]> = {
  stop: ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"],
  start: ["START", "YES", "UNSTOP"],
  help: ["HELP", "INFO"],
};

/** Words that may come with a keyword without changing what it asks for. */
const POLITE = new Set([
  "PLEASE",
  "PLS",
  "PLZ",
  "NOW",
  "ME",
  "IT",
  "ALL",
  "THANKS",
  "THANK",
  "YOU",
  "THX",
  "TEXTING",
  "TEXTS",
  "TEXT",
  "SENDING",
  "MESSAGING",
  "MESSAGES",
  "MSGS",
  "SMS",
]);

/** A keyword is a short message; a longer text that merely contains one is a sentence. */
const MAX_WORDS = 6;

const BY_WORD = new Map(
  (Object.entries(FAMILIES) as [KeywordKind, readonly string[]][]).flatMap(([kind, words]) =>
    words.map((w) => [w, kind] as const),
  ),
);

/** The keyword family of `body` and the keyword itself (e.g. `{ kind: "stop", word: "OPTOUT" }`), or null. */
export function classifyKeyword(body: string): { kind: KeywordKind; word: string } | null {
  const words = body
    .normalize("NFKC")
    .toUpperCase()
    .replace(/[^\p{L}\p{N}]+/gu, " ")
    .trim()
    .split(" ")
    .filter(Boolean);
  if (words.length === 0 || words.length > MAX_WORDS) return null;
  const core = words.filter((w) => !POLITE.has(w));
  // Joined, so that spacing and punctuation inside a keyword do not matter: "opt out", "S.T.O.P".
  const joined = core.join("");
  const kind = BY_WORD.get(joined);
  return kind ? { kind, word: joined } : null;
}
