import type { Response } from "express";

/** A webhook's refusal: the status, and a JSON error with a stable code (docs/error_codes.md). */
export function refuse(res: Response, status: number, code: string, message: string): void {
  res.status(status).json({ error: { code, message } });
}
