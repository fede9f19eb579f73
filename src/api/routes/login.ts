import express, { type RequestHandler } from "express";
import type pg from "pg";
import { z } from "zod";
import type { Authenticator } from "../../auth.ts";
import { LoginLimits } from "../login-limits.ts";
import { jsonError } from "../responses.ts";
import { admitSignIn, answerSignedIn, type LoginIdentity } from "../sign-in.ts";

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
    // Per account and client, per client, and a slower per-account curve for unknown clients (src/api/login-limits.ts).
    const body = await admitSignIn(req, res, {
      body: loginBody,
      authenticator,
      admit: (body) => limits.admit(pool, body.email, req.ip),
      attempts: "sign-in attempts",
    });
    if (!body) return;
    const { rows } = await pool.query<LoginIdentity>(
      "select (i).* from (select herald_private.verify_login($1, $2, $3) as i) s",
      [body.email, body.password, body.tenant ?? null],
    );
    const identity = rows[0];
    if (!identity?.user_id) {
      res.status(401).json(jsonError("INVALID_CREDENTIALS", "Email, password or tenant is not right."));
      return;
    }
    await limits.remember(pool, body.email, req.ip);
    await answerSignedIn(res, authenticator, { ...identity, user_id: identity.user_id });
  };
}
