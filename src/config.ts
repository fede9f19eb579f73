import { createPublicKey } from "node:crypto";
import { z } from "zod";
import { MIN_CONNECTIONS } from "./db/budget.ts";
import { generatedUnsubscribeKey, loadOrCreateSecrets } from "./secrets.ts";

/**
 * All of Herald's configuration, read once from the environment and validated.
 * Anything missing that Herald can safely generate for development (JWT secret,
 * master and hash keys) comes from `.data/secrets.json` instead, with a warning.
 */

const base64Key = (name: string) =>
  z.string().refine((v) => /^[A-Za-z0-9+/]+={0,2}$/.test(v) && Buffer.from(v, "base64").length === 32, {
    message: `${name} must be 32 bytes encoded as base64 (try: openssl rand -base64 32)`,
  });

function isPublicKey(base64Der: string): boolean {
  try {
    createPublicKey({ key: Buffer.from(base64Der, "base64"), format: "der", type: "spki" });
    return true;
  } catch {
    return false;
  }
}

const optionalText = z
  .string()
  .trim()
  .transform((v) => (v === "" ? undefined : v))
  .optional();

const envSchema = z
  .object({
    DATABASE_URL: optionalText.pipe(
      z
        .string()
        .refine((v) => /^postgres(ql)?:\/\//.test(v), "must be a postgres:// URL")
        .optional(),
    ),
    PORT: z.coerce.number().int().min(0).max(65535).default(5050),
    HERALD_PUBLIC_URL: optionalText.pipe(z.url().optional()),
    HERALD_JWT_SECRET: optionalText.pipe(
      z.string().min(32, "HERALD_JWT_SECRET must be at least 32 characters").optional(),
    ),
    HERALD_JWT_JWKS_URL: optionalText.pipe(z.url().optional()),
    HERALD_JWT_ISSUER: optionalText,
    HERALD_JWT_AUDIENCE: optionalText,
    HERALD_MASTER_KEY: optionalText.pipe(base64Key("HERALD_MASTER_KEY").optional()),
    HERALD_HASH_KEY: optionalText.pipe(base64Key("HERALD_HASH_KEY").optional()),
    // Rotation: keys that are being retired, accepted for reading only.
    HERALD_MASTER_KEY_PREVIOUS: optionalText.pipe(
      z
        .string()
        .transform((v) =>
          v
            .split(",")
            .map((k) => k.trim())
            .filter(Boolean),
        )
        .pipe(z.array(base64Key("each key in HERALD_MASTER_KEY_PREVIOUS")))
        .optional(),
    ),
    HERALD_HASH_KEY_PREVIOUS: optionalText.pipe(base64Key("HERALD_HASH_KEY_PREVIOUS").optional()),
    // Signs marketing email's unsubscribe links (src/messages/unsubscribe.ts); they never expire, so neither may it.
    HERALD_UNSUBSCRIBE_KEY: optionalText.pipe(base64Key("HERALD_UNSUBSCRIBE_KEY").optional()),
    TWILIO_ACCOUNT_SID: optionalText,
    TWILIO_AUTH_TOKEN: optionalText,
    HERALD_SMS_FROM: optionalText,
    // A US long code sends about one message a second; toll-free and short codes more.
    HERALD_SMS_FROM_MPS: z.coerce.number().positive().max(10_000).default(1),
    SENDGRID_API_KEY: optionalText,
    HERALD_EMAIL_FROM: optionalText,
    // The event webhook's verification key, as SendGrid shows it: base64 DER.
    SENDGRID_WEBHOOK_PUBLIC_KEY: optionalText.pipe(
      z
        .string()
        .refine(
          isPublicKey,
          "SENDGRID_WEBHOOK_PUBLIC_KEY must be the base64 (DER) public key from SendGrid's event webhook settings",
        )
        .optional(),
    ),
    // Meta's Graph API (WhatsApp Cloud API accounts): its base URL and version; unset in development: the sandbox's.
    HERALD_META_GRAPH_URL: optionalText.pipe(z.url().optional()),
    HERALD_META_GRAPH_VERSION: z
      .string()
      .regex(/^v\d{1,3}\.\d{1,2}$/, "HERALD_META_GRAPH_VERSION must look like v21.0")
      .default("v21.0"),
    HERALD_WORKER_CONCURRENCY: z.coerce.number().int().min(1).max(200).default(10),
    // Connections to PostgreSQL per Herald process, all pools together (src/db/budget.ts).
    HERALD_DB_CONNECTIONS: z.coerce
      .number()
      .int()
      .min(MIN_CONNECTIONS, `HERALD_DB_CONNECTIONS must be at least ${MIN_CONNECTIONS}`)
      .max(1000)
      .default(20),
    // Status reconciliation: a `sent` delivery without a final status this long after sending is looked up at the provider.
    HERALD_STATUS_CHECK_AFTER_SECONDS: z.coerce
      .number()
      .min(1)
      .max(7 * 86_400)
      .default(600),
    HERALD_STATUS_CHECK_INTERVAL_SECONDS: z.coerce.number().min(1).max(3600).default(60),
    // Provider requests one worker process has in flight at most (sends and lookups).
    HERALD_SEND_CONCURRENCY: z.coerce.number().int().min(1).max(10_000).default(200),
    // Outbound webhooks to tenants' own endpoints.
    HERALD_WEBHOOK_MAX_ATTEMPTS: z.coerce.number().int().min(1).max(50).default(8),
    HERALD_WEBHOOK_DISABLE_AFTER: z.coerce.number().int().min(1).max(10_000).default(20),
    HERALD_WEBHOOK_RETRY_BASE_SECONDS: z.coerce.number().min(0.01).max(3600).default(30),
    HERALD_WEBHOOK_TIMEOUT_SECONDS: z.coerce.number().min(1).max(120).default(10),
    HERALD_WEBHOOK_ALLOW_PRIVATE: optionalText.pipe(z.enum(["true", "false"]).optional()),
    // Express's `trust proxy`: which proxies' X-Forwarded-For to believe (hops, or addresses/CIDRs).
    HERALD_TRUST_PROXY: optionalText,
    // Where Twilio's media may be fetched besides https://api.twilio.com: a sandbox's origin (docs/whatsapp.md).
    HERALD_TWILIO_MEDIA_ORIGINS: optionalText.pipe(
      z
        .string()
        .regex(
          /^https?:\/\/[^\s/?#@,]+(,https?:\/\/[^\s/?#@,]+)*$/,
          "comma-separated origins, like http://127.0.0.1:5050",
        )
        .optional(),
    ),
    HERALD_EMBEDDED_PG_PORT: z.preprocess(
      (v) => (v === "" ? undefined : v),
      z.coerce.number().int().min(1).max(65535).optional(),
    ),
    NODE_ENV: optionalText,
    LOG_LEVEL: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
  })
  .superRefine((env, ctx) => {
    if (env.HERALD_JWT_JWKS_URL && !(env.HERALD_JWT_ISSUER && env.HERALD_JWT_AUDIENCE)) {
      ctx.addIssue({
        code: "custom",
        path: ["HERALD_JWT_JWKS_URL"],
        message: "HERALD_JWT_JWKS_URL needs HERALD_JWT_ISSUER and HERALD_JWT_AUDIENCE too",
      });
    }
    if (Boolean(env.TWILIO_ACCOUNT_SID) !== Boolean(env.TWILIO_AUTH_TOKEN)) {
      ctx.addIssue({
        code: "custom",
        path: ["TWILIO_ACCOUNT_SID"],
        message: "set both TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN, or neither (sandbox)",
      });
    }
  });

/** How outbound webhooks to tenants' endpoints are posted and retried (HERALD_WEBHOOK_*). */
export interface OutboundWebhookPolicy {
  /** Attempts per event before it is given up (each a new try after a growing wait). */
  maxAttempts: number;
  /** Failed attempts in a row, across events, after which the endpoint is disabled. */
  disableAfter: number;
  /** The first retry's wait; each next one doubles it (at most an hour). */
  retryBaseMs: number;
  /** The whole exchange with the endpoint, connect to last byte. */
  timeoutMs: number;
  /** Posts to loopback/private addresses and plain http allowed (development and tests only). */
  allowPrivateNetworks: boolean;
}

export type JwtConfig =
  | { kind: "hs256"; secret: Uint8Array; audience: string; issuer?: string }
  | { kind: "jwks"; jwksUrl: URL; audience: string; issuer: string; secret?: Uint8Array };

export interface Config {
  databaseUrl?: string;
  port: number;
  /** What providers call and sign (HERALD_PUBLIC_URL; in development, the local address by default). */
  publicUrl: string;
  /** Where status callbacks are asked for: none in production until HERALD_PUBLIC_URL says where Herald is. */
  callbackBaseUrl?: string;
  jwt: JwtConfig;
  masterKey: Buffer;
  /** Master keys being retired: they unwrap tenant keys until `herald keys rotate-master` rewraps them. */
  previousMasterKeys: Buffer[];
  hashKey: Buffer;
  /** The hash key being replaced: lookups try it until `herald keys rotate-hash` has rebuilt every hash. */
  previousHashKey?: Buffer;
  /** HERALD_UNSUBSCRIBE_KEY: signs the unsubscribe links of marketing email. */
  unsubscribeKey: Buffer;
  twilio?: { accountSid: string; authToken: string; smsFrom?: string };
  sendgrid?: { apiKey: string; emailFrom?: string };
  /** SENDGRID_WEBHOOK_PUBLIC_KEY: verifies the system account's event webhook. */
  sendgridWebhookPublicKey?: string;
  /** HERALD_META_GRAPH_URL / _VERSION: where Meta accounts send (unset: https://graph.facebook.com, or the sandbox's in development). */
  metaGraph: { url?: string; version: string };
  /** HERALD_SMS_FROM / HERALD_EMAIL_FROM, also used with the sandbox when no provider is configured. */
  smsFrom?: string;
  emailFrom?: string;
  /** Messages per second the system SMS number may send (HERALD_SMS_FROM_MPS). */
  smsFromMps: number;
  workerConcurrency: number;
  /** HERALD_DB_CONNECTIONS: this process's connections to PostgreSQL, all pools together. */
  dbConnections: number;
  /** HERALD_STATUS_CHECK_*: when overdue `sent` deliveries are looked up at the provider, and how often that is checked. */
  statusCheck: { afterMs: number; intervalMs: number };
  /** HERALD_SEND_CONCURRENCY: provider requests in flight per worker process. */
  sendConcurrency: number;
  /** Outbound webhooks: attempts, when an endpoint is disabled, retry pacing, and whether private addresses may be posted to. */
  outboundWebhooks: OutboundWebhookPolicy;
  /** HERALD_TRUST_PROXY, for express: the client's address behind a TLS-terminating proxy (login limits). */
  trustProxy: boolean | number | string;
  /** HERALD_TWILIO_MEDIA_ORIGINS: origins of Twilio stand-ins whose media may be fetched (a sandbox); none by default. */
  twilioMediaOrigins: string[];
  embeddedPgPort?: number;
  development: boolean;
  logLevel: string;
  /** Names of the values generated into `.data/` rather than configured; for a start-up warning. */
  generated: string[];
  rolePasswords: Record<string, string>;
}

/**
 * Development mode (GraphiQL, detailed errors) only where it is safe to guess:
 * NODE_ENV decides when set; otherwise the embedded database means a developer's
 * machine and DATABASE_URL means a deployment, which gets production behaviour.
 */
export function isDevelopment(env: NodeJS.ProcessEnv): boolean {
  // Anything but development or test (staging, prod, …) is production: no unauthenticated sandbox page, no private webhook targets.
  if (env.NODE_ENV) return ["development", "test"].includes(env.NODE_ENV);
  return !env.DATABASE_URL;
}

/** HERALD_TRUST_PROXY as express takes it: a hop count, true/false, or addresses and CIDRs. */
function parseTrustProxy(value: string | undefined): boolean | number | string {
  if (value === undefined || value === "false") return false;
  if (value === "true") return true;
  return /^\d+$/.test(value) ? Number(value) : value;
}

const fromBase64 = (value: string | undefined) => (value ? Buffer.from(value, "base64") : undefined);

export class ConfigError extends Error {
  override name = "ConfigError";
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const parsed = envSchema.safeParse(env);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join(".") || "environment"}: ${i.message}`);
    throw new ConfigError(`Invalid configuration:\n${lines.join("\n")}`);
  }
  const e = parsed.data;
  const { secrets } = loadOrCreateSecrets();
  const generated: string[] = [];
  const pick = (value: string | undefined, fallback: string, name: string) => {
    if (value) return value;
    generated.push(name);
    return fallback;
  };

  const audience = e.HERALD_JWT_AUDIENCE ?? "herald";
  const hsSecret = e.HERALD_JWT_SECRET ? new TextEncoder().encode(e.HERALD_JWT_SECRET) : undefined;
  let jwt: JwtConfig;
  if (e.HERALD_JWT_JWKS_URL) {
    jwt = {
      kind: "jwks",
      jwksUrl: new URL(e.HERALD_JWT_JWKS_URL),
      issuer: e.HERALD_JWT_ISSUER!,
      audience,
      // With an external identity provider, Herald only signs tokens itself
      // (password login, `herald token`) when a secret is configured explicitly.
      secret: hsSecret,
    };
  } else {
    jwt = {
      kind: "hs256",
      secret: hsSecret ?? new TextEncoder().encode(pick(undefined, secrets.jwtSecret, "HERALD_JWT_SECRET")),
      audience,
      issuer: e.HERALD_JWT_ISSUER,
    };
  }

  return {
    databaseUrl: e.DATABASE_URL,
    port: e.PORT,
    publicUrl: (e.HERALD_PUBLIC_URL ?? `http://localhost:${e.PORT}`).replace(/\/$/, ""),
    callbackBaseUrl: e.HERALD_PUBLIC_URL
      ? e.HERALD_PUBLIC_URL.replace(/\/$/, "")
      : isDevelopment(env)
        ? `http://localhost:${e.PORT}`
        : undefined,
    jwt,
    masterKey: Buffer.from(pick(e.HERALD_MASTER_KEY, secrets.masterKey, "HERALD_MASTER_KEY"), "base64"),
    previousMasterKeys: (e.HERALD_MASTER_KEY
      ? (e.HERALD_MASTER_KEY_PREVIOUS ?? [])
      : (secrets.previousMasterKeys ?? [])
    ).map((k) => Buffer.from(k, "base64")),
    hashKey: Buffer.from(pick(e.HERALD_HASH_KEY, secrets.hashKey, "HERALD_HASH_KEY"), "base64"),
    previousHashKey: fromBase64(e.HERALD_HASH_KEY ? e.HERALD_HASH_KEY_PREVIOUS : secrets.previousHashKey),
    unsubscribeKey: Buffer.from(
      e.HERALD_UNSUBSCRIBE_KEY ?? pick(undefined, generatedUnsubscribeKey(secrets), "HERALD_UNSUBSCRIBE_KEY"),
      "base64",
    ),
    twilio:
      e.TWILIO_ACCOUNT_SID && e.TWILIO_AUTH_TOKEN
        ? { accountSid: e.TWILIO_ACCOUNT_SID, authToken: e.TWILIO_AUTH_TOKEN, smsFrom: e.HERALD_SMS_FROM }
        : undefined,
    sendgrid: e.SENDGRID_API_KEY ? { apiKey: e.SENDGRID_API_KEY, emailFrom: e.HERALD_EMAIL_FROM } : undefined,
    sendgridWebhookPublicKey: e.SENDGRID_WEBHOOK_PUBLIC_KEY,
    metaGraph: { url: e.HERALD_META_GRAPH_URL?.replace(/\/$/, ""), version: e.HERALD_META_GRAPH_VERSION },
    smsFrom: e.HERALD_SMS_FROM,
    emailFrom: e.HERALD_EMAIL_FROM,
    smsFromMps: e.HERALD_SMS_FROM_MPS,
    workerConcurrency: e.HERALD_WORKER_CONCURRENCY,
    dbConnections: e.HERALD_DB_CONNECTIONS,
    statusCheck: {
      afterMs: e.HERALD_STATUS_CHECK_AFTER_SECONDS * 1000,
      intervalMs: e.HERALD_STATUS_CHECK_INTERVAL_SECONDS * 1000,
    },
    sendConcurrency: e.HERALD_SEND_CONCURRENCY,
    outboundWebhooks: {
      maxAttempts: e.HERALD_WEBHOOK_MAX_ATTEMPTS,
      disableAfter: e.HERALD_WEBHOOK_DISABLE_AFTER,
      retryBaseMs: e.HERALD_WEBHOOK_RETRY_BASE_SECONDS * 1000,
      timeoutMs: e.HERALD_WEBHOOK_TIMEOUT_SECONDS * 1000,
      // A tenant's URL must not reach Herald's own network, except on a developer's machine.
      allowPrivateNetworks: e.HERALD_WEBHOOK_ALLOW_PRIVATE
        ? e.HERALD_WEBHOOK_ALLOW_PRIVATE === "true"
        : isDevelopment(env),
    },
    trustProxy: parseTrustProxy(e.HERALD_TRUST_PROXY),
    twilioMediaOrigins: e.HERALD_TWILIO_MEDIA_ORIGINS?.split(",") ?? [],
    embeddedPgPort: e.HERALD_EMBEDDED_PG_PORT,
    development: isDevelopment(env),
    logLevel: e.LOG_LEVEL,
    generated,
    rolePasswords: secrets.rolePasswords,
  };
}
