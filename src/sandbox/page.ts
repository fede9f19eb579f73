import { escapeHtml } from "../html.ts";
import type { SandboxMessage } from "./core.ts";
import { sendExtras } from "./whatsapp.ts";

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

/** An email's From name, Reply-To and added headers (List-Unsubscribe…), under its body. */
function emailHeaders(m: SandboxMessage): string {
  const lines = [
    ...(m.fromName ? [`From: ${m.fromName} <${m.from}>`] : []),
    ...(m.replyTo ? [`Reply-To: ${m.replyTo}`] : []),
    ...Object.entries(m.headers ?? {}).map(([name, value]) => `${name}: ${value}`),
  ];
  return lines.length ? `<pre class="headers">${escapeHtml(lines.join("\n"))}</pre>` : "";
}

export function sandboxPage(
  messages: SandboxMessage[],
  labelOf: (message: SandboxMessage) => string,
  keep: number,
  textIn?: { action: string; exchanges: TextedIn[] },
  /** Extra sections (Messaging Services: services.ts; who holds which number: numbers.ts), already HTML. */
  extra = "",
  engageAction?: string,
): string {
  const groups = new Map<string, SandboxMessage[]>();
  for (const m of [...messages].reverse()) groups.set(labelOf(m), [...(groups.get(labelOf(m)) ?? []), m]);
  const sections = [...groups.entries()]
    .map(
      ([label, list]) =>
        `<h2>${escapeHtml(label)}</h2><table><tr><th>when</th><th>provider</th><th>account</th><th>channel</th><th>from</th><th>to</th><th>subject</th><th>body</th>${engageAction ? "<th>recipient</th>" : ""}</tr>\n` +
        list
          .map(
            (m) =>
              `<tr><td>${m.createdAt.toISOString()}</td><td>${escapeHtml(m.provider)}</td><td>${escapeHtml(m.account)}</td><td>${m.channel}</td>` +
              `<td>${escapeHtml(m.from)}</td><td>${escapeHtml(m.to)}</td><td>${escapeHtml(m.subject ?? "")}</td><td>${escapeHtml(m.body)}${sendExtras(m)}${emailHeaders(m)}</td>` +
              (engageAction ? `<td>${m.provider === "sendgrid" ? engageForms(engageAction, m) : ""}</td>` : "") +
              "</tr>",
          )
          .join("\n") +
        "</table>",
    )
    .join("\n");
  return `<!doctype html><html><head><meta charset="utf-8"><title>Herald sandbox</title>
<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}</style></head>
<body><h1>Herald sandbox</h1><p>What would have reached a phone or an inbox, grouped by the provider account that sent it: a tenant's own account, or Herald's system account, which every tenant without an account of its own sends through (newest first, last ${keep} kept in memory).</p>
${sections || "<p>Nothing sent yet.</p>"}
${extra}
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

/** An email's "open" and "click" buttons: the recipient engaging, as a signed SendGrid event (src/sandbox/engagement.ts). */
function engageForms(action: string, m: SandboxMessage): string {
  const link =
    /href\s*=\s*"(https?:\/\/[^"]+)"/i.exec(m.html ?? "")?.[1]?.replace(/&amp;/g, "&") ?? "https://example.com/";
  const hidden = `<input type="hidden" name="messageId" value="${escapeHtml(m.id)}"><input type="hidden" name="to" value="${escapeHtml(m.to)}">`;
  return (
    `<form method="post" action="${escapeHtml(action)}">${hidden}<input type="hidden" name="event" value="open"><button>Open</button></form>` +
    `<form method="post" action="${escapeHtml(action)}">${hidden}<input type="hidden" name="event" value="click">` +
    `<input name="url" value="${escapeHtml(link)}" size="30"> <button>Click</button></form>`
  );
}
