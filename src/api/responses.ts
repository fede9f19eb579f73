import type { Response } from "express";

/** Herald's JSON error body outside GraphQL: a stable code (docs/error_codes.md) and a message for people. */
export const jsonError = (code: string, message: string) => ({ error: { code, message } });

/** A refusal: the status, and the JSON error. */
export function refuse(res: Response, status: number, code: string, message: string): void {
  res.status(status).json(jsonError(code, message));
}
