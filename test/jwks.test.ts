import http from "node:http";
import type { AddressInfo } from "node:net";
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROLES } from "../src/db/urls.ts";
import { graphql, useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";
import { seedTwoTenants, type TenantFixture } from "./helpers/fixtures.ts";

/**
 * An external identity provider: a local JWKS endpoint serving an RSA public
 * key, with Herald configured by HERALD_JWT_JWKS_URL + issuer + audience and
 * no HERALD_JWT_SECRET.
 */

const ISSUER = "https://id.example.test/";
const AUDIENCE = "herald-api";
let providerKey: CryptoKey;
let strangerKey: CryptoKey;
let jwksUrl: string;
let jwksServer: http.Server;

beforeAll(async () => {
  const pair = await generateKeyPair("RS256", { extractable: true });
  ({ privateKey: strangerKey } = await generateKeyPair("RS256"));
  providerKey = pair.privateKey;
  const jwk = { ...(await exportJWK(pair.publicKey)), kid: "provider-1", alg: "RS256", use: "sig" };
  jwksServer = http.createServer((_req, res) => {
    res.setHeader("content-type", "application/json");
    res.end(JSON.stringify({ keys: [jwk] }));
  });
  await new Promise<void>((resolve) => jwksServer.listen(0, "127.0.0.1", resolve));
  jwksUrl = `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/jwks.json`;
});

afterAll(async () => {
  await new Promise((resolve) => jwksServer?.close(resolve));
});

const db = useTestDatabase();
const api = useApiServer(db, {
  env: () => ({
    HERALD_JWT_JWKS_URL: jwksUrl,
    HERALD_JWT_ISSUER: ISSUER,
    HERALD_JWT_AUDIENCE: AUDIENCE,
    HERALD_JWT_SECRET: undefined,
  }),
});
let a: TenantFixture;

beforeAll(async () => {
  ({ a } = await seedTwoTenants(db.current));
});

const providerToken = (
  claims: Record<string, unknown>,
  options: { key?: CryptoKey; issuer?: string; kid?: string } = {},
) =>
  new SignJWT(claims)
    .setProtectedHeader({ alg: "RS256", kid: options.kid ?? "provider-1" })
    .setIssuer(options.issuer ?? ISSUER)
    .setAudience(AUDIENCE)
    .setSubject(String(claims.sub ?? a.ownerId))
    .setExpirationTime("5m")
    .sign(options.key ?? providerKey);

const QUERY = "{ currentTenant { slug } }";

describe("JWKS mode", () => {
  it("accepts the provider's member token", async () => {
    const { status, body } = await graphql(
      api.current,
      await providerToken({ role: ROLES.member, tenant_id: a.id }),
      QUERY,
    );
    expect(status).toBe(200);
    expect(body.data).toEqual({ currentTenant: { slug: "tenant-a" } });
  });

  it.each([
    [
      "another issuer",
      () => providerToken({ role: ROLES.member, tenant_id: a.id }, { issuer: "https://evil.example.test/" }),
      "INVALID_TOKEN",
    ],
    [
      "a key the provider does not publish",
      () => providerToken({ role: ROLES.member, tenant_id: a.id }, { key: strangerKey }),
      "INVALID_TOKEN",
    ],
    ["an admin role from the provider", () => providerToken({ role: ROLES.admin }), "INVALID_CLAIMS"],
    [
      "an HS256 token (no secret is configured in this mode)",
      () =>
        new SignJWT({ role: ROLES.member, tenant_id: a.id })
          .setProtectedHeader({ alg: "HS256" })
          .setIssuer(ISSUER)
          .setAudience(AUDIENCE)
          .setExpirationTime("5m")
          .sign(new TextEncoder().encode("s".repeat(48))),
      "INVALID_TOKEN",
    ],
  ])("refuses %s", async (_name, makeToken, code) => {
    const { status, body } = await graphql(api.current, await makeToken(), QUERY);
    expect(status).toBe(401);
    expect(body.error?.code).toBe(code);
  });

  it("has no password login without a signing secret", async () => {
    const response = await fetch(`${api.current.url}/auth/login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ email: "owner@tenant-a.test", password: "tenant-a-password" }),
    });
    expect(response.status).toBe(501);
  });
});
