import type { RequestHandler } from "express";
import { jsonError } from "./responses.ts";
import { TENANT_MAX_IN_FLIGHT, TENANT_MAX_QUEUED, TENANT_QUEUE_WAIT_MS } from "./limits.ts";

/**
 * At most `maxInFlight` GraphQL requests per tenant at a time in this process
 * (each may hold a pool connection for its whole transaction), so one
 * tenant's heavy requests cannot take every connection from the others. More
 * wait in a short per-tenant queue, first come first served; a request that
 * finds the queue full, or waits longer than `queueWaitMs`, gets 429 with
 * `Retry-After` and the code `TOO_MANY_CONCURRENT_REQUESTS`. Operators share
 * one lane of their own. A slot is released when the response ends or the
 * client goes away.
 */

interface Lane {
  inFlight: number;
  waiting: Array<() => void>;
}

export function tenantConcurrency(
  options: { maxInFlight?: number; maxQueued?: number; queueWaitMs?: number } = {},
): RequestHandler {
  const maxInFlight = options.maxInFlight ?? TENANT_MAX_IN_FLIGHT;
  const maxQueued = options.maxQueued ?? TENANT_MAX_QUEUED;
  const queueWaitMs = options.queueWaitMs ?? TENANT_QUEUE_WAIT_MS;
  const lanes = new Map<string, Lane>();

  const release = (key: string, lane: Lane) => {
    const nextInLine = lane.waiting.shift();
    if (nextInLine) return nextInLine(); // The slot passes on; inFlight is unchanged.
    lane.inFlight -= 1;
    if (lane.inFlight === 0) lanes.delete(key);
  };

  return (req, res, next) => {
    const identity = req.heraldIdentity;
    const key = identity?.tenantId && identity.kind !== "admin" ? `tenant:${identity.tenantId}` : "operators";
    let lane = lanes.get(key);
    if (!lane) lanes.set(key, (lane = { inFlight: 0, waiting: [] }));
    const admitted = lane;
    const start = () => {
      res.once("close", () => release(key, admitted));
      next();
    };
    if (admitted.inFlight < maxInFlight) {
      admitted.inFlight += 1;
      return start();
    }
    const refuse = () => {
      res
        .status(429)
        .set("Retry-After", "1")
        .json(
          jsonError(
            "TOO_MANY_CONCURRENT_REQUESTS",
            `This tenant already has ${maxInFlight} GraphQL requests running (and ${maxQueued} waiting); try again in a second.`,
          ),
        );
    };
    if (admitted.waiting.length >= maxQueued) return refuse();
    const turn = () => {
      clearTimeout(timer);
      res.off("close", gaveUp);
      start();
    };
    const leaveQueue = () => {
      const index = admitted.waiting.indexOf(turn);
      if (index >= 0) admitted.waiting.splice(index, 1);
    };
    const gaveUp = () => {
      clearTimeout(timer);
      leaveQueue();
    };
    const timer = setTimeout(() => {
      res.off("close", gaveUp);
      leaveQueue();
      refuse();
    }, queueWaitMs);
    res.once("close", gaveUp);
    admitted.waiting.push(turn);
  };
}
