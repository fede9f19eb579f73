import "../src/env-defaults.ts";
import { benchContacts } from "./contacts.ts";
import { benchFanOut } from "./fan-out.ts";
import { benchPipeline } from "./pipeline.ts";
import { benchRls } from "./rls.ts";
import { benchSegments } from "./segments.ts";
import { benchWebhooks } from "./webhooks.ts";

/** `npm run bench [-- rls|contacts|pipeline|webhooks|fan-out|segments]`: every benchmark, or the one named. Ratios come from one run each. */
const benches: Record<string, () => Promise<void>> = {
  rls: benchRls,
  contacts: benchContacts,
  pipeline: benchPipeline,
  webhooks: benchWebhooks,
  "fan-out": benchFanOut,
  segments: benchSegments,
};
const asked = process.argv.slice(2);
const unknown = asked.filter((name) => !benches[name]);
if (unknown.length > 0) {
  process.stderr.write(`unknown benchmark ${unknown.join(", ")}; choose from: ${Object.keys(benches).join(", ")}\n`);
  process.exit(2);
}
for (const name of asked.length > 0 ? asked : Object.keys(benches)) await benches[name]!();
