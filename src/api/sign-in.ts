import type { Response } from "express";
import type { Authenticator } from "../auth.ts";

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
