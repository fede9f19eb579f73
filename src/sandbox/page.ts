import { escapeHtml } from "../html.ts";
import type { SandboxMessage } from "./core.ts";

/**
 * The sandbox's page (`GET /sandbox`, development only): what would have
 * reached a phone or an inbox, grouped by the provider account that sent it
 * (src/sandbox/labels.ts), newest first; and the "text in" form, a phone
 * writing to one of the tenants' numbers.
 */

/** One use of the "text in" form: what was sent, Herald's answer, the replies it made. */
export interface TextedIn {
  at: Date;
  from: string;
  to: string;
  body: string;
  status: number;
  replies: string[];
}

export function sandboxPage(
  messages: SandboxMessage[],
  labelOf: (message: SandboxMessage) => string,
  keep: number,
  textIn?: { action: string; exchanges: TextedIn[] },
  numbersHtml = "",
): string {
  const groups = new Map<string, SandboxMessage[]>();
  for (const m of [...messages].reverse()) groups.set(labelOf(m), [...(groups.get(labelOf(m)) ?? []), m]);
  const sections = [...groups.entries()]
    .map(
      ([label, list]) =>
        `<h2>${escapeHtml(label)}</h2><table><tr><th>when</th><th>provider</th><th>account</th><th>channel</th><th>from</th><th>to</th><th>subject</th><th>body</th></tr>\n` +
        list
          .map(
            (m) =>
              `<tr><td>${m.createdAt.toISOString()}</td><td>${escapeHtml(m.provider)}</td><td>${escapeHtml(m.account)}</td><td>${m.channel}</td>` +
              `<td>${escapeHtml(m.from)}</td><td>${escapeHtml(m.to)}</td><td>${escapeHtml(m.subject ?? "")}</td><td>${escapeHtml(m.body)}</td></tr>`,
          )
          .join("\n") +
        "</table>",
    )
    .join("\n");
  return `<!doctype html><html><head><meta charset="utf-8"><title>Herald sandbox</title>
<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}</style></head>
<body><h1>Herald sandbox</h1><p>What would have reached a phone or an inbox, grouped by the provider account that sent it: a tenant's own account, or Herald's system account, which every tenant without an account of its own sends through (newest first, last ${keep} kept in memory).</p>
${sections || "<p>Nothing sent yet.</p>"}
${numbersHtml}
${textIn ? textInSection(textIn.action, textIn.exchanges) : ""}</body></html>`;
}

function textInSection(action: string, exchanges: TextedIn[]): string {
  const rows = [...exchanges]
    .reverse()
    .map(
      (e) =>
        `<tr><td>${e.at.toISOString()}</td><td>${escapeHtml(e.from)}</td><td>${escapeHtml(e.to)}</td><td>${escapeHtml(e.body)}</td>` +
        `<td>${e.status === 404 ? "no tenant has this number" : e.status}</td><td>${escapeHtml(e.replies.join(" / "))}</td></tr>`,
    )
    .join("\n");
  return `<h2>Text in</h2><p>A phone writing to one of the tenants' numbers (try STOP, START or HELP).</p>
<form method="post" action="${escapeHtml(action)}"><label>from <input name="from" value="+14155550101"></label>
<label>to <input name="to" placeholder="a tenant's number"></label> <label>text <input name="body" value="HELP"></label>
<select name="channel"><option>sms</option><option>whatsapp</option></select> <button>Send</button></form>
${rows ? `<table><tr><th>when</th><th>from</th><th>to</th><th>text</th><th>answer</th><th>replies</th></tr>${rows}</table>` : ""}`;
}
