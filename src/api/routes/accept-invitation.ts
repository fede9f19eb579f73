import express, { type RequestHandler, type Response } from "express";
import type pg from "pg";
import { z } from "zod";
import type { Authenticator } from "../../auth.ts";
import { LoginLimits } from "../login-limits.ts";
import { jsonError } from "../responses.ts";
import { admitSignIn, answerSignedIn, type LoginIdentity } from "../sign-in.ts";

const acceptBody = z.object({
  // Herald's tokens are `hi_` and 48 hex digits; any other string is simply not one.
  token: z.string().trim().min(1).max(128),
  password: z.string().min(1).max(1024),
});

/**
 * Every refusal of the token or the password looks the same: unknown,
 * expired, withdrawn, used, or an existing user's wrong password.
 */
const invalid = (res: Response) =>
  res
    .status(404)
    .json(
      jsonError(
        "INVALID_INVITATION",
        "Invalid or expired invitation, or not the password of the account it was sent to.",
      ),
    );

/** Errors of herald_private.accept_invitation that are the person's to fix, by SQLSTATE. */
const REFUSALS: Record<string, { status: number; code: string; message: string }> = {
  WEAKP: { status: 400, code: "WEAK_PASSWORD", message: "The password must be at least 10 characters." },
  // Raised by the invitation's trigger: a password-proven user who joined the tenant since.
  "23505": { status: 409, code: "ALREADY_MEMBER", message: "You already belong to this tenant: sign in." },
  // A platform operator's user never joins a tenant (migration 070).
  OPSLF: { status: 403, code: "FORBIDDEN", message: "A platform operator's user cannot join a tenant." },
};

/** POST /auth/accept-invitation: its body parser, then the acceptance itself. */
export function acceptInvitationRoute(authenticator: Authenticator, pool: pg.Pool, hashKey: Buffer): RequestHandler[] {
  return [express.json({ limit: "16kb" }), acceptInvitation(authenticator, pool, new LoginLimits(hashKey))];
}

/**
 * An invitation's token + a password → the membership it offers, and a JWT
 * for it, as login answers. For a person without a Herald user, the password
 * becomes theirs; an existing user gives their own.
 */
function acceptInvitation(authenticator: Authenticator, pool: pg.Pool, limits: LoginLimits): RequestHandler {
  return async (req, res) => {
    // Before the database, the JWT check too: an invitation accepted without a JWT to show for it would be spent.
    const body = await admitSignIn(req, res, {
      body: acceptBody,
      authenticator,
      admit: (body) => limits.admitInvitation(pool, body.token, req.ip),
      attempts: "attempts",
    });
    if (!body) return;
    let identity: LoginIdentity | undefined;
    try {
      const { rows } = await pool.query<LoginIdentity>(
        "select (i).* from (select herald_private.accept_invitation($1, $2) as i) s",
        [body.token, body.password],
      );
      identity = rows[0];
    } catch (error) {
      const refusal = REFUSALS[(error as { code?: string }).code ?? ""];
      if (!refusal) throw error;
      res.status(refusal.status).json(jsonError(refusal.code, refusal.message));
      return;
    }
    if (!identity?.user_id) {
      invalid(res);
      return;
    }
    await answerSignedIn(res, authenticator, { ...identity, user_id: identity.user_id });
  };
}
