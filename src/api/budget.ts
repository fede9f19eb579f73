import {
  getOperationAST,
  GraphQLError,
  Kind,
  type ExecutionResult,
  type FragmentDefinitionNode,
} from "postgraphile/graphql";
import type { GrafastExecutionArgs as ExecutionArgs } from "postgraphile/grafast";
import { estimateNodes, nodeLimitError } from "./cost.ts";
import { Lane } from "./heavy-lane.ts";
import {
  EXECUTION_TIMEOUT_MS,
  LARGE_OPERATION_NODES,
  LARGE_OPERATION_WAIT_MS,
  LARGE_OPERATIONS_AT_ONCE,
  MAX_ESTIMATED_NODES,
  MAX_FETCHED_BYTES,
} from "./limits.ts";

/**
 * Per-request budget enforced while an operation runs, so that the ceiling
 * holds even where the node estimate is wrong (a field that is larger than
 * its page size suggests, wide text or JSON values):
 *
 * - before planning, the node estimate again, now with the request's variables;
 *   a large operation then waits for its turn in the large-operation lane;
 * - the data fetched from PostgreSQL (the rows each asynchronous step
 *   returns, in approximate bytes): past `MAX_FETCHED_BYTES` the step that
 *   crossed it fails, so its rows are never expanded into a response;
 * - time: past `EXECUTION_TIMEOUT_MS`, no further step starts.
 *
 * Either overrun turns the whole response into one error with a code naming
 * the limit (a partial result would be as large as what the budget refused).
 */

interface Budget {
  started: number;
  fetchedBytes: number;
  /** Objects already counted: rows share metadata, which must not be counted once per row. */
  seen: WeakSet<object>;
  exceeded?: GraphQLError;
}

/** Keyed by the request's GraphQL context: Grafast copies the execution args, but passes the context on as it is. */
const budgets = new WeakMap<object, Budget>();
const budgetKey = (args: ExecutionArgs): object | undefined =>
  typeof args.contextValue === "object" && args.contextValue !== null ? args.contextValue : undefined;

function responseTooLarge(): GraphQLError {
  return new GraphQLError(
    `This operation fetches more than ${Math.round(MAX_FETCHED_BYTES / 1024 / 1024)} MiB of data; the response budget is ${MAX_FETCHED_BYTES} bytes. Ask for fewer fields or smaller pages.`,
    { extensions: { code: "RESPONSE_TOO_LARGE", limit: MAX_FETCHED_BYTES } },
  );
}

function executionTimeout(): GraphQLError {
  return new GraphQLError(
    `This operation ran longer than ${EXECUTION_TIMEOUT_MS / 1000} s and was stopped. Ask for less at a time.`,
    {
      extensions: { code: "EXECUTION_TIMEOUT", limit: EXECUTION_TIMEOUT_MS },
    },
  );
}

/** Approximate serialized size of a step's results; stops early once the budget is spent. */
function addBytes(budget: Budget, value: unknown, depth: number): void {
  if (budget.fetchedBytes > MAX_FETCHED_BYTES) return;
  if (value === null || value === undefined) {
    budget.fetchedBytes += 4;
    return;
  }
  if (typeof value === "string") {
    budget.fetchedBytes += value.length + 2;
    return;
  }
  if (typeof value !== "object") {
    budget.fetchedBytes += 8;
    return;
  }
  if (depth > 12 || budget.seen.has(value) || typeof (value as PromiseLike<unknown>).then === "function") return;
  budget.seen.add(value);
  if (ArrayBuffer.isView(value)) {
    budget.fetchedBytes += value.byteLength;
  } else if (Array.isArray(value)) {
    budget.fetchedBytes += 2 + value.length;
    for (const item of value) addBytes(budget, item, depth + 1);
  } else if (!(value instanceof Date)) {
    for (const item of Object.values(value)) addBytes(budget, item, depth + 1);
  } else {
    budget.fetchedBytes += 24;
  }
}

function charge<T>(budget: Budget, results: T): T {
  addBytes(budget, results, 0);
  if (budget.fetchedBytes > MAX_FETCHED_BYTES) {
    budget.exceeded ??= responseTooLarge();
    throw budget.exceeded;
  }
  return results;
}

function fragmentsOf(args: ExecutionArgs): (name: string) => FragmentDefinitionNode | undefined {
  const fragments = new Map<string, FragmentDefinitionNode>();
  for (const definition of args.document.definitions) {
    if (definition.kind === Kind.FRAGMENT_DEFINITION) fragments.set(definition.name.value, definition);
  }
  return (name) => fragments.get(name);
}

function serverBusy(): GraphQLError {
  return new GraphQLError(
    `The server is busy with other large operations (over ${LARGE_OPERATION_NODES} nodes); try again shortly, or ask for smaller pages.`,
    { extensions: { code: "SERVER_BUSY" } },
  );
}

const largeOperations = new Lane(LARGE_OPERATIONS_AT_ONCE);

const isExecutionResult = (value: unknown): value is ExecutionResult =>
  typeof value === "object" && value !== null && !(Symbol.asyncIterator in value);

export const BudgetPlugin: GraphileConfig.Plugin = {
  name: "HeraldBudgetPlugin",
  description: "The node estimate with variables, and a data and time budget per GraphQL request.",
  version: "0.1.0",
  grafast: {
    middleware: {
      execute(next, event) {
        const { args } = event;
        const operation = getOperationAST(args.document, args.operationName);
        const estimate = operation
          ? estimateNodes(
              args.schema,
              operation,
              fragmentsOf(args),
              (args.variableValues ?? {}) as Record<string, unknown>,
            )
          : 0;
        if (estimate > MAX_ESTIMATED_NODES) return { errors: [nodeLimitError(estimate, operation!)] };
        const run = () => {
          const budget: Budget = { started: performance.now(), fetchedBytes: 0, seen: new WeakSet() };
          const key = budgetKey(args);
          if (key) budgets.set(key, budget);
          const finish = (result: Awaited<ReturnType<typeof next>>) =>
            budget.exceeded && isExecutionResult(result) ? { errors: [budget.exceeded] } : result;
          const result = next();
          return result instanceof Promise ? result.then(finish) : finish(result as Awaited<ReturnType<typeof next>>);
        };
        if (estimate <= LARGE_OPERATION_NODES) return run();
        return largeOperations.acquire(LARGE_OPERATION_WAIT_MS).then(async (release) => {
          if (!release) return { errors: [serverBusy()] };
          try {
            return await run();
          } finally {
            release();
          }
        });
      },
      executeStep(next, event) {
        const key = budgetKey(event.args);
        const budget = key && budgets.get(key);
        if (!budget) return next();
        if (budget.exceeded) throw budget.exceeded;
        if (performance.now() - budget.started > EXECUTION_TIMEOUT_MS) {
          budget.exceeded = executionTimeout();
          throw budget.exceeded;
        }
        const results = next();
        if (results instanceof Promise) return results.then((list) => charge(budget, list));
        if (!Array.isArray(results)) return results;
        // Items may themselves be promises: each is charged when it settles.
        return charge(
          budget,
          (results as unknown[]).map((item) =>
            item instanceof Promise ? item.then((value: unknown) => charge(budget, value)) : item,
          ),
        ) as typeof results;
      },
    },
  },
};
