import { createRemoteJWKSet, jwtVerify, SignJWT, type JWTVerifyGetKey } from "jose";
import type pg from "pg";
import { z } from "zod";
import type { Config } from "./config.ts";
import { ROLES } from "./db/urls.ts";

/**
 * Turns request credentials into the three transaction-local settings that
 * PostgreSQL's policies read. Nothing else from a token ever reaches the database.
 */

export type PgSettings = {
  role: typeof ROLES.member | typeof ROLES.admin;
  "jwt.claims.tenant_id": string;
  "jwt.claims.user_id": string;
};

export interface Identity {
  kind: "user" | "api_key" | "admin";
  tenantId?: string;
  userId?: string;
  apiKeyId?: string;
  pgSettings: PgSettings;
}

export class AuthError extends Error {
  override name = "AuthError";
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.code = code;
  }
}

export const API_KEY_PREFIX = "hk_";

const claimsSchema = z
  .object({
    sub: z.uuid().optional(),
    tenant_id: z.uuid().optional(),
    role: z.enum([ROLES.member, ROLES.admin]),
    exp: z.number(),
  })
  .refine((c) => c.role === ROLES.admin || c.tenant_id !== undefined, {
    message: "a herald_member token needs a tenant_id claim",
  });

export type HeraldClaims = z.infer<typeof claimsSchema>;

function settingsFor(role: PgSettings["role"], tenantId?: string, userId?: string): PgSettings {
  // Empty strings, not absent keys: a pooled connection must never keep a
  // previous request's value, and current_tenant_id() reads '' as null.
  return { role, "jwt.claims.tenant_id": tenantId ?? "", "jwt.claims.user_id": userId ?? "" };
}

export interface Authenticator {
  /** Resolve an `Authorization` header; throws AuthError for anything not valid. */
  authenticate(header: string | undefined): Promise<Identity>;
  /** Sign a Herald JWT (login, CLI, demo tokens). */
  sign(claims: { sub?: string; tenant_id?: string; role: PgSettings["role"] }, expiresIn?: string): Promise<string>;
  canSign: boolean;
}

export function createAuthenticator(config: Config, authenticatorPool: pg.Pool): Authenticator {
  const { jwt } = config;
  const signingSecret = jwt.secret;
  const jwks = jwt.kind === "jwks" ? createRemoteJWKSet(jwt.jwksUrl) : undefined;
  // HS256 tokens are Herald's own (verified with its secret); anything else must
  // come from the identity provider's key set.
  const getKey: JWTVerifyGetKey = async (header, token) => {
    if (header.alg === "HS256" && signingSecret) return signingSecret;
    if (jwks) return jwks(header, token);
    throw new AuthError("INVALID_TOKEN", "The token is not valid.");
  };
  const algorithms = [
    ...(signingSecret ? ["HS256"] : []),
    ...(jwks ? ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"] : []),
  ];

  async function verifyJwt(token: string): Promise<Identity> {
    let payload: unknown;
    let alg: string | undefined;
    try {
      // `algorithms` pins the accepted algorithms, so `alg: none` and
      // algorithm-confusion tokens fail here.
      const result = await jwtVerify(token, getKey, {
        algorithms,
        audience: jwt.audience,
        issuer: jwt.issuer,
        requiredClaims: ["exp"],
      });
      payload = result.payload;
      alg = result.protectedHeader.alg;
    } catch (error) {
      const code = (error as { code?: string }).code;
      if (code === "ERR_JWT_EXPIRED") throw new AuthError("TOKEN_EXPIRED", "The token has expired.");
      throw new AuthError("INVALID_TOKEN", "The token is not valid.");
    }
    const claims = claimsSchema.safeParse(payload);
    if (!claims.success) {
      throw new AuthError("INVALID_CLAIMS", `The token's claims are not valid: ${claims.error.issues[0]?.message}`);
    }
    const { role, tenant_id, sub } = claims.data;
    if (role === ROLES.admin && alg !== "HS256") {
      // Platform-admin tokens come from Herald (`herald token --admin`), never
      // from a tenant-facing identity provider.
      throw new AuthError("INVALID_CLAIMS", "herald_admin tokens are issued by Herald only.");
    }
    if (role === ROLES.member) await assertMembership(tenant_id!, sub);
    return {
      kind: role === ROLES.admin ? "admin" : "user",
      tenantId: tenant_id,
      userId: sub,
      pgSettings: settingsFor(role, tenant_id, sub),
    };
  }

  async function assertMembership(tenantId: string, userId: string | undefined): Promise<void> {
    const { rows } = await authenticatorPool.query<{ ok: boolean }>(
      "select herald_private.verify_member_claims($1, $2) as ok",
      [userId ?? null, tenantId],
    );
    if (!rows[0]?.ok) {
      throw new AuthError("NOT_A_MEMBER", "The token's tenant is suspended or its user no longer belongs to it.");
    }
  }

  async function verifyApiKey(secret: string): Promise<Identity> {
    if (!/^hk_[0-9a-f]{48}$/.test(secret)) throw new AuthError("INVALID_API_KEY", "The API key is not valid.");
    // The secret travels as a bind parameter; the definer function hashes it.
    const { rows } = await authenticatorPool.query<{ tenant_id: string | null; api_key_id: string | null }>(
      "select (k).tenant_id, (k).api_key_id from (select herald_private.authenticate_api_key($1) as k) s",
      [secret],
    );
    const row = rows[0];
    if (!row?.tenant_id || !row.api_key_id) {
      throw new AuthError("INVALID_API_KEY", "The API key is not valid or has been revoked.");
    }
    return {
      kind: "api_key",
      tenantId: row.tenant_id,
      apiKeyId: row.api_key_id,
      pgSettings: settingsFor(ROLES.member, row.tenant_id),
    };
  }

  return {
    canSign: signingSecret !== undefined,
    async authenticate(header) {
      if (!header) throw new AuthError("MISSING_TOKEN", "Send `Authorization: Bearer <JWT or API key>`.");
      const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
      if (!match) throw new AuthError("MALFORMED_AUTHORIZATION", "The Authorization header must be `Bearer <token>`.");
      const token = match[1]!;
      return token.startsWith(API_KEY_PREFIX) ? verifyApiKey(token) : verifyJwt(token);
    },
    async sign(claims, expiresIn = "1h") {
      if (!signingSecret) {
        throw new AuthError("NO_SIGNING_KEY", "Herald signs tokens only with HERALD_JWT_SECRET configured.");
      }
      const builder = new SignJWT({ role: claims.role, ...(claims.tenant_id ? { tenant_id: claims.tenant_id } : {}) })
        .setProtectedHeader({ alg: "HS256", typ: "JWT" })
        .setAudience(jwt.audience)
        .setIssuedAt()
        .setExpirationTime(expiresIn);
      if (claims.sub) builder.setSubject(claims.sub);
      if (jwt.issuer) builder.setIssuer(jwt.issuer);
      return builder.sign(signingSecret);
    },
  };
}
