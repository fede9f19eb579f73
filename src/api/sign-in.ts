import type { Request, Response } from "express";
import type { z } from "zod";
import type { Authenticator } from "../auth.ts";
import { jsonError } from "./responses.ts";

/** What herald_private.verify_login and accept_invitation return: the membership to sign a JWT for. */
export interface LoginIdentity {
  user_id: string | null;
  tenant_id: string;
  tenant_slug: string;
  membership_role: string;
}

/** How long a password sign-in's JWT lasts. */
const EXPIRES_IN_SECONDS = 3600;

/** A member JWT for the identity, answered as every password sign-in answers (`POST /auth/login`). */
export async function answerSignedIn(
  res: Response,
  authenticator: Authenticator,
  identity: LoginIdentity & { user_id: string },
): Promise<void> {
  const token = await authenticator.sign(
    { sub: identity.user_id, tenant_id: identity.tenant_id, role: "herald_member" },
    `${EXPIRES_IN_SECONDS}s`,
  );
  res.json({
    token,
    expiresIn: EXPIRES_IN_SECONDS,
    tenant: { id: identity.tenant_id, slug: identity.tenant_slug },
    role: identity.membership_role,
  });
}

/**
 * The checks every password sign-in makes before the database: a body of the
 * right shape (else 400 naming the field), within its attempt limit (else 429
 * with Retry-After), and a Herald that can sign JWTs (else 501). The parsed
 * body, or undefined once the refusal is answered.
 */
export async function admitSignIn<T>(
  req: Request,
  res: Response,
  options: {
    body: z.ZodType<T>;
    authenticator: Authenticator;
    /** Seconds to wait before another attempt, 0 when this one may go ahead. */
    admit: (body: T) => Promise<number>;
    attempts: string;
  },
): Promise<T | undefined> {
  const body = options.body.safeParse(req.body);
  if (!body.success) {
    const issue = body.error.issues[0]!;
    res.status(400).json({ error: { code: "INVALID_INPUT", field: issue.path.join("."), message: issue.message } });
    return undefined;
  }
  const wait = await options.admit(body.data);
  if (wait > 0) {
    res
      .status(429)
      .set("Retry-After", String(wait))
      .json(jsonError("RATE_LIMITED", `Too many ${options.attempts}; try again in ${wait} s.`));
    return undefined;
  }
  if (!options.authenticator.canSign) {
    res
      .status(501)
      .json(
        jsonError("LOGIN_DISABLED", "Password login needs HERALD_JWT_SECRET; sign in with your identity provider."),
      );
    return undefined;
  }
  return body.data;
}
