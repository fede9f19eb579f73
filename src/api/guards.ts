import { depthLimit } from "@graphile/depth-limit";
import type { RequestHandler, Response } from "express";
import {
  GraphQLError,
  Kind,
  parse,
  visit,
  type ASTVisitor,
  type DocumentNode,
  type SelectionSetNode,
  type ValidationContext,
  type ValidationRule,
} from "graphql";
import { BudgetPlugin } from "./budget.ts";
import { nodeLimitRule } from "./cost.ts";
import { IntrospectionCachePlugin } from "./introspection-cache.ts";
import { PageSizePlugin } from "./page-size-plugin.ts";
import {
  MAX_DEPTH,
  MAX_INTROSPECTION_DEPTH,
  MAX_LIST_DEPTH,
  MAX_PAGE_SIZE,
  MAX_SELECTIONS,
  MAX_TYPE_DEPTH,
} from "./limits.ts";

/**
 * Abuse guard rails for the GraphQL endpoint, applied after the standard
 * validation: bounded depth, bounded size, bounded page size, a bounded
 * estimate of the nodes returned (src/api/cost.ts), and, while it runs, a data
 * and time budget (src/api/budget.ts). Limits: src/api/limits.ts, documented
 * in docs/limits.md.
 */

export { MAX_DEPTH, MAX_PAGE_SIZE, MAX_SELECTIONS };
const PAGE_ARGUMENTS = new Set(["first", "last"]);
/** Counts that PostgreSQL refuses when negative (LIMIT, OFFSET). */
const COUNT_ARGUMENTS = new Set(["first", "last", "offset"]);

const pageSizeMessage = (name: string, value: number) =>
  `\`${name}\` is ${value}; pages are at most ${MAX_PAGE_SIZE} rows. Paginate with \`after\`/\`before\` cursors.`;
const negativeCountMessage = (name: string, value: number) => `\`${name}\` is ${value}; it must be 0 or more.`;
const NUL_MESSAGE = "Text may not contain NUL characters (\\u0000).";

/** Literal `first`/`last` over the maximum; literal `first`/`last`/`offset` below zero. */
const pageSizeRule: ValidationRule = (context: ValidationContext): ASTVisitor => ({
  Argument(node) {
    if (!COUNT_ARGUMENTS.has(node.name.value) || node.value.kind !== Kind.INT) return;
    const value = Number(node.value.value);
    if (value < 0) {
      context.reportError(
        new GraphQLError(negativeCountMessage(node.name.value, value), {
          nodes: [node],
          extensions: { code: "INVALID_INPUT", field: node.name.value },
        }),
      );
    } else if (value > MAX_PAGE_SIZE && PAGE_ARGUMENTS.has(node.name.value)) {
      context.reportError(
        new GraphQLError(pageSizeMessage(node.name.value, value), {
          nodes: [node],
          extensions: { code: "PAGE_TOO_LARGE" },
        }),
      );
    }
  },
});

/** PostgreSQL text cannot hold NUL: refuse it in a string literal, as input, rather than fail in SQL. */
const nulCharacterRule: ValidationRule = (context: ValidationContext): ASTVisitor => ({
  StringValue(node) {
    if (node.value.includes("\u0000")) {
      context.reportError(new GraphQLError(NUL_MESSAGE, { nodes: [node], extensions: { code: "INVALID_INPUT" } }));
    }
  },
});

/** A third-party rule's errors, with Herald's `extensions.code`. */
const withCode =
  (rule: ValidationRule, code: string): ValidationRule =>
  (context) =>
    rule(
      Object.create(context, {
        reportError: {
          value: (error: GraphQLError) =>
            context.reportError(
              new GraphQLError(error.message, { nodes: error.nodes, extensions: { ...error.extensions, code } }),
            ),
        },
      }) as ValidationContext,
    );

/**
 * A crude cost bound: the number of field selections an operation makes, with
 * every fragment spread counted as the fields it stands for, each time it is
 * spread. Aliases let a shallow query repeat an expensive field many times,
 * and a fragment spread N times costs N times its fields; this caps both.
 * Counts stop growing once past the limit, so a fragment that fans out
 * exponentially costs no more to count than to refuse.
 */
const maxSelectionsRule: ValidationRule = (context: ValidationContext): ASTVisitor => {
  const fragmentSizes = new Map<string, number>();
  const fragmentSize = (name: string, expanding: Set<string>): number => {
    const known = fragmentSizes.get(name);
    if (known !== undefined) return known;
    const fragment = context.getFragment(name);
    // Unknown and cyclic fragments are other rules' to report.
    if (!fragment || expanding.has(name)) return 0;
    expanding.add(name);
    const size = selectionCount(fragment.selectionSet, expanding);
    expanding.delete(name);
    fragmentSizes.set(name, size);
    return size;
  };
  const selectionCount = (set: SelectionSetNode, expanding: Set<string>): number => {
    let count = 0;
    for (const selection of set.selections) {
      if (count > MAX_SELECTIONS) break;
      if (selection.kind === Kind.FIELD)
        count += 1 + (selection.selectionSet ? selectionCount(selection.selectionSet, expanding) : 0);
      else if (selection.kind === Kind.INLINE_FRAGMENT) count += selectionCount(selection.selectionSet, expanding);
      else count += fragmentSize(selection.name.value, expanding);
    }
    return count;
  };
  return {
    OperationDefinition(node) {
      if (selectionCount(node.selectionSet, new Set()) <= MAX_SELECTIONS) return;
      context.reportError(
        new GraphQLError(`This operation selects more than ${MAX_SELECTIONS} fields; split it into smaller ones.`, {
          nodes: [node],
          extensions: { code: "OPERATION_TOO_COSTLY" },
        }),
      );
    },
  };
};

export const guardRules: ValidationRule[] = [
  withCode(
    depthLimit({
      maxDepth: MAX_DEPTH,
      maxListDepth: MAX_LIST_DEPTH,
      maxSelfReferentialDepth: 2,
      // What graphql's getIntrospectionQuery() asks (GraphiQL, codegen, Postman):
      // `ofType` nested `typeDepth` times, under __schema.types.fields.args.type.
      maxIntrospectionDepth: MAX_INTROSPECTION_DEPTH,
      maxDepthByFieldCoordinates: { "__Type.ofType": MAX_TYPE_DEPTH },
      revealDetails: true,
    }),
    "DEPTH_LIMIT_EXCEEDED",
  ),
  maxSelectionsRule,
  pageSizeRule,
  nulCharacterRule,
  nodeLimitRule,
];

/**
 * `first: $n` with `$n` over the maximum (or any count below zero), whether
 * sent in `variables` or taken from the operation's default
 * (`query($n: Int = 5000)`); checked once variables are known (see
 * `operationVariablesGuard`).
 */
export function checkPageSizeVariables(
  document: DocumentNode,
  variableValues: Record<string, unknown>,
): GraphQLError | undefined {
  const countVariables = new Map<string, string>();
  const defaults = new Map<string, number>();
  visit(document, {
    Argument(node) {
      if (COUNT_ARGUMENTS.has(node.name.value) && node.value.kind === Kind.VARIABLE)
        countVariables.set(node.value.name.value, node.name.value);
    },
    VariableDefinition(node) {
      if (node.defaultValue?.kind === Kind.INT) defaults.set(node.variable.name.value, Number(node.defaultValue.value));
    },
  });
  for (const [name, argument] of countVariables) {
    const value = variableValues[name] ?? defaults.get(name);
    if (typeof value !== "number") continue;
    if (value < 0) {
      return new GraphQLError(negativeCountMessage(`$${name}`, value), {
        extensions: { code: "INVALID_INPUT", field: `$${name}` },
      });
    }
    if (value > MAX_PAGE_SIZE && PAGE_ARGUMENTS.has(argument)) {
      return new GraphQLError(pageSizeMessage(`$${name}`, value), { extensions: { code: "PAGE_TOO_LARGE" } });
    }
  }
  return undefined;
}

/** The path (`$input.contact.firstName`) of the first string holding a NUL character, if any. */
export function findNulCharacter(value: unknown, path: string): string | undefined {
  if (typeof value === "string") return value.includes("\u0000") ? path : undefined;
  if (typeof value !== "object" || value === null) return undefined;
  for (const [key, item] of Object.entries(value)) {
    const found = findNulCharacter(item, Array.isArray(value) ? `${path}[${key}]` : `${path}.${key}`);
    if (found) return found;
  }
  return undefined;
}

export const HeraldGuardsPlugin: GraphileConfig.Plugin = {
  name: "HeraldGuardsPlugin",
  description: "Depth, size, page-size and node-count limits for every GraphQL operation.",
  version: "0.1.0",
  grafserv: {
    middleware: {
      // Grafserv validates HTTP requests with `validationRules` (after the
      // specified rules), caching the result per query text.
      setPreset(next, event) {
        event.validationRules.push(...guardRules);
        return next();
      },
    },
  },
};

/** The guard rails as a preset: validation rules, page sizes in plans, the per-request budget. */
export const guardPlugins: GraphileConfig.Plugin[] = [
  HeraldGuardsPlugin,
  PageSizePlugin,
  IntrospectionCachePlugin,
  BudgetPlugin,
];

const invalidVariables = (res: Response, error: GraphQLError) =>
  res.status(400).json({ errors: [{ message: error.message, extensions: error.extensions }] });

/**
 * Express middleware in front of /graphql: what validation cannot see in the
 * variables — a page size out of range, a NUL character. Runs before Grafast so
 * the client gets a 400 like any other invalid request (a Grafast middleware
 * that throws would surface as a 500).
 */
export const operationVariablesGuard: RequestHandler = (req, res, next) => {
  const body = req.body as { query?: unknown; variables?: unknown } | undefined;
  const variables =
    typeof body?.variables === "object" && body.variables !== null ? (body.variables as Record<string, unknown>) : {};
  const nulAt = findNulCharacter(variables, "$");
  if (nulAt) {
    const field = nulAt.replace(/^\$\./, "$");
    return invalidVariables(
      res,
      new GraphQLError(`${field}: ${NUL_MESSAGE}`, { extensions: { code: "INVALID_INPUT", field } }),
    );
  }
  // Parsing is for queries that could pass a count in a variable; Grafserv
  // parses (and caches) every query anyway, so skip the rest cheaply.
  if (typeof body?.query !== "string" || !body.query.includes("$") || !/\b(first|last|offset)\b/.test(body.query)) {
    return next();
  }
  let document: DocumentNode;
  try {
    document = parse(body.query);
  } catch {
    return next(); // Grafserv reports syntax errors itself.
  }
  const error = checkPageSizeVariables(document, variables);
  if (!error) return next();
  invalidVariables(res, error);
};
