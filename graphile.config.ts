import type pg from "pg";
import { makePgService } from "postgraphile/adaptors/pg";
import { PostGraphileAmberPreset } from "postgraphile/presets/amber";
import type { Identity } from "./src/auth.ts";
import type { Keyring } from "./src/crypto/keyring.ts";
import { ContactsPlugin } from "./src/api/contacts-plugin.ts";
import { makeMaskError } from "./src/api/errors.ts";
import { guardPlugins } from "./src/api/guards.ts";
import { PayloadNamesPlugin } from "./src/api/payload-names-plugin.ts";
import { SendToAddressPlugin } from "./src/api/send-to-address-plugin.ts";
import { STATEMENT_TIMEOUT } from "./src/api/limits.ts";
import type { Logger } from "./src/logger.ts";

/**
 * Herald's PostGraphile preset: `herald_public` becomes the GraphQL API, and
 * each request runs inside a transaction whose settings come only from the
 * identity that src/api/server.ts verified (JWT or API key).
 */

declare global {
  namespace Express {
    interface Request {
      heraldIdentity?: Identity;
    }
  }
}

export function makeHeraldPreset(options: {
  pool: pg.Pool;
  keyring: Keyring;
  development: boolean;
  logger: Logger;
}): GraphileConfig.Preset {
  return {
    extends: [PostGraphileAmberPreset],
    plugins: [...guardPlugins, ContactsPlugin, PayloadNamesPlugin, SendToAddressPlugin],
    pgServices: [makePgService({ pool: options.pool, schemas: ["herald_public"] })],
    grafast: {
      async context(requestContext) {
        const identity = requestContext.expressv4?.req.heraldIdentity;
        if (!identity) {
          // The auth middleware answers 401 before this; refuse rather than run unauthenticated.
          throw new Error("GraphQL request reached PostGraphile without an identity");
        }
        // Only the allow-listed settings, never a whole token payload; plus, for
        // a tenant's own users and API keys, that tenant's PII keys. Operators
        // get none, even with a tenant in their token.
        const keys =
          identity.kind !== "admin" && identity.tenantId
            ? await options.keyring.sessionSettings(options.pool, identity.tenantId)
            : {};
        return {
          pgSettings: {
            ...identity.pgSettings,
            // The audit log's actor: the API key's id (always set: '' for others).
            "herald.api_key_id": identity.apiKeyId ?? "",
            "herald.actor_detail": identity.kind === "user" && !identity.userId ? "a token without a user" : "",
            // No request may run for ever (an expensive view, a large page): operators get longer.
            statement_timeout: identity.kind === "admin" ? STATEMENT_TIMEOUT.admin : STATEMENT_TIMEOUT.member,
            ...keys,
          },
        };
      },
    },
    grafserv: {
      graphqlPath: "/graphql",
      graphiql: options.development,
      graphiqlPath: "/graphiql",
      graphiqlOnGraphQLGET: false,
      graphqlOverGET: false,
      websockets: false,
      watch: false,
      maxRequestLength: 100_000,
      maskError: makeMaskError(options.logger, options.development),
    },
  };
}
