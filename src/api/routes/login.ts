import express, { type RequestHandler } from "express";
import type pg from "pg";
import { z } from "zod";
import type { Authenticator } from "../../auth.ts";
import { LoginLimits } from "../login-limits.ts";
import { jsonError } from "../responses.ts";
import { answerSignedIn, type LoginIdentity } from "../sign-in.ts";

const loginBody = z.object({
  email: z.string().trim().min(3).max(320),
  password: z.string().min(1).max(1024),
  tenant: z.string().trim().min(1).max(63).optional(),
});

/** POST /auth/login: its body parser, then the login itself. */
export function loginRoute(authenticator: Authenticator, pool: pg.Pool, hashKey: Buffer): RequestHandler[] {
  return [express.json({ limit: "16kb" }), login(authenticator, pool, new LoginLimits(hashKey))];
}

/** Email + password → a JWT for one of the user's memberships. */
function login(authenticator: Authenticator, pool: pg.Pool, limits: LoginLimits): RequestHandler {
  return async (req, res) => {
    const body = loginBody.safeParse(req.body);
    if (!body.success) {
      const issue = body.error.issues[0]!;
      res.status(400).json({ error: { code: "INVALID_INPUT", field: issue.path.join("."), message: issue.message } });
      return;
    }
    // Per account and client, per client, and a slower per-account curve for unknown clients (src/api/login-limits.ts).
    const wait = await limits.admit(pool, body.data.email, req.ip);
    if (wait > 0) {
      res
        .status(429)
        .set("Retry-After", String(wait))
        .json(jsonError("RATE_LIMITED", `Too many sign-in attempts; try again in ${wait} s.`));
      return;
    }
    if (!authenticator.canSign) {
      res
        .status(501)
        .json(
          jsonError("LOGIN_DISABLED", "Password login needs HERALD_JWT_SECRET; sign in with your identity provider."),
        );
      return;
    }
    const { rows } = await pool.query<LoginIdentity>(
      "select (i).* from (select herald_private.verify_login($1, $2, $3) as i) s",
      [body.data.email, body.data.password, body.data.tenant ?? null],
    );
    const identity = rows[0];
    if (!identity?.user_id) {
      res.status(401).json(jsonError("INVALID_CREDENTIALS", "Email, password or tenant is not right."));
      return;
    }
    await limits.remember(pool, body.data.email, req.ip);
    await answerSignedIn(res, authenticator, { ...identity, user_id: identity.user_id });
  };
}
