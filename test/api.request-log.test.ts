import { expect, it } from "vitest";
import { createLogger } from "../src/logger.ts";
import { useApiServer } from "./helpers/api.ts";
import { useTestDatabase } from "./helpers/db.ts";

/** The request log names the path a client asked for, also when a mounted middleware answered it (a 401). */

const lines: Record<string, unknown>[] = [];
const logger = createLogger("info", { write: (line: string) => void lines.push(JSON.parse(line)) });
const db = useTestDatabase();
const api = useApiServer(db, { logger });

it("logs a 401 to /graphql with the path /graphql, and no query string", async () => {
  const response = await fetch(`${api.current.url}/graphql?token=secret`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ query: "{ __typename }" }),
  });
  expect(response.status).toBe(401);
  await new Promise((resolve) => setTimeout(resolve, 50)); // the log line is written on 'finish'
  const logged = lines.filter((l) => l.msg === "request" && l.status === 401);
  expect(logged).toHaveLength(1);
  expect(logged[0]).toMatchObject({ method: "POST", path: "/graphql", status: 401 });
  expect(JSON.stringify(lines)).not.toContain("secret");
});
