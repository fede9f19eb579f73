import type { Response } from "express";
import { RETRY_AFTER_SECONDS } from "../db/availability.ts";

/** Herald's JSON error body outside GraphQL: a stable code (docs/error_codes.md) and a message for people. */
export const jsonError = (code: string, message: string) => ({ error: { code, message } });

/** A refusal: the status, and the JSON error. */
export function refuse(res: Response, status: number, code: string, message: string): void {
  res.status(status).json(jsonError(code, message));
}

/** 503 with Retry-After: the database is restarting or refusing connections; the client should try again. */
export function unavailable(res: Response): void {
  res
    .status(503)
    .set("Retry-After", String(RETRY_AFTER_SECONDS))
    .json(jsonError("DATABASE_UNAVAILABLE", `The database is unavailable; try again in ${RETRY_AFTER_SECONDS} s.`));
}
