import { randomUUID } from "node:crypto";
import { GraphQLError, type GraphQLFormattedError } from "graphql";
import { isSafeError } from "postgraphile/grafast";
import { defaultMaskError } from "postgraphile/grafserv";
import { isDatabaseUnavailable, RETRY_AFTER_SECONDS } from "../db/availability.ts";
import type { Logger } from "../logger.ts";
import { fieldOfConstraint } from "./constraint-fields.ts";

/**
 * The one place database errors become client errors (see docs/error_codes.md).
 * Known codes get a short human message and a stable `extensions.code`;
 * anything else is logged with an id and, in production, replaced by that id
 * so no SQL, constraint internals or stack trace leaves the server.
 */

interface PgError {
  code: string;
  message: string;
  column?: string;
  constraint?: string;
  table?: string;
}

const isPgError = (e: unknown): e is PgError =>
  typeof e === "object" &&
  e !== null &&
  typeof (e as PgError).code === "string" &&
  /^[0-9A-Z]{5}$/.test((e as PgError).code);

/** Herald's own SQLSTATEs, raised in migrations with `using errcode = '…'`: their message is for humans. */
const HERALD_CODES: Record<string, string> = {
  NOTNT: "NO_TENANT",
  REVKD: "ALREADY_REVOKED",
  WEAKP: "WEAK_PASSWORD",
  NTFND: "NOT_FOUND",
  NOKEY: "NO_KEY",
  NOSND: "NOT_OWN_SENDER",
  LSTOW: "LAST_OWNER",
  OPSLF: "FORBIDDEN",
};

function translate(pgError: PgError): { message: string; code: string; field?: string } | undefined {
  const heraldCode = HERALD_CODES[pgError.code];
  if (heraldCode) return { message: pgError.message, code: heraldCode, field: pgError.column };
  switch (pgError.code) {
    case "42501":
      return { message: "Permission denied.", code: "FORBIDDEN" };
    case "23505": {
      const field = fieldOfConstraint(pgError.constraint);
      return {
        message: field ? `\`${field}\`: that value is already taken.` : "That already exists.",
        code: "CONFLICT",
        field,
      };
    }
    case "23503": {
      // Also what referencing another tenant's row looks like: it does not exist for you.
      const field = fieldOfConstraint(pgError.constraint);
      return {
        message: field ? `\`${field}\`: no such record.` : "A referenced record was not found.",
        code: "NOT_FOUND",
        field,
      };
    }
    case "23502":
      return { message: `\`${pgError.column}\` is required.`, code: "INVALID_INPUT", field: pgError.column };
    case "23514":
    case "23P01": {
      const field = fieldOfConstraint(pgError.constraint);
      return {
        message: field ? `\`${field}\`: the value is not allowed.` : "A value is not allowed.",
        code: pgError.code === "23P01" ? "CONFLICT" : "INVALID_INPUT",
        field,
      };
    }
    // PostgreSQL's statement_timeout cancelled a statement (STATEMENT_TIMEOUT in limits.ts).
    // The same SQLSTATE also means a cancel by an operator (pg_cancel_backend): that stays INTERNAL.
    case "57014":
      return /statement timeout/.test(pgError.message)
        ? {
            message: "A database statement of this operation ran too long and was cancelled. Ask for less at a time.",
            code: "QUERY_TIMEOUT",
          }
        : undefined;
    // Bad values. 2201W, 2201X, 22021 and 22P05 (negative LIMIT/OFFSET, NUL in
    // text or JSON) are refused earlier by the guards; these cases are a backstop.
    case "22023":
    case "22P02":
    case "22007":
    case "22008":
    case "22003":
    case "22001":
    case "2201W":
    case "2201X":
    case "22021":
    case "22P05":
      return { message: pgError.message, code: "INVALID_INPUT", field: pgError.column };
    default:
      return undefined;
  }
}

/** "webhook deliveries" → "webhook delivery", "contacts" → "contact": a table's name for one of its rows. */
const singular = (plural: string) => plural.replace(/ies$/, "y").replace(/s$/, "");

export function makeMaskError(logger: Logger, development: boolean) {
  return (error: GraphQLError): GraphQLError | GraphQLFormattedError => {
    const original = error.originalError;
    if (!original || original instanceof GraphQLError) return error;
    if (isPgError(original)) {
      const known = translate(original);
      if (known) {
        return new GraphQLError(known.message, {
          nodes: error.nodes,
          source: error.source,
          positions: error.positions,
          path: error.path,
          extensions: { code: known.code, ...(known.field ? { field: known.field } : {}) },
        });
      }
    }
    if (isSafeError(original)) return defaultMaskError(error);
    // The server restarting or refusing connections: a retry will do, no error id needed.
    if (isDatabaseUnavailable(original)) {
      return new GraphQLError(`The database is unavailable; try again in ${RETRY_AFTER_SECONDS} s.`, {
        nodes: error.nodes,
        positions: error.positions,
        path: error.path,
        extensions: { code: "DATABASE_UNAVAILABLE", retryAfter: RETRY_AFTER_SECONDS },
      });
    }
    // PostGraphile's update/delete mutations found no row the caller may
    // change: another tenant's row looks exactly like a missing one.
    const missing = /^No values were (?:updated|deleted) in collection '([a-z_]+)'/.exec(original.message);
    if (missing) {
      return new GraphQLError(`No such ${singular(missing[1]!.replace(/_/g, " "))}.`, {
        nodes: error.nodes,
        positions: error.positions,
        path: error.path,
        extensions: { code: "NOT_FOUND" },
      });
    }
    const errorId = randomUUID();
    logger.error(
      { errorId, path: error.path, err: { message: original.message, code: (original as Partial<PgError>).code } },
      "unexpected GraphQL error",
    );
    return new GraphQLError(development ? original.message : `An internal error occurred (id: ${errorId}).`, {
      nodes: error.nodes,
      positions: error.positions,
      path: error.path,
      extensions: { code: "INTERNAL", errorId },
    });
  };
}
