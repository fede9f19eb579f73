import { depthLimit } from "@graphile/depth-limit";
import type { RequestHandler } from "express";
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

/**
 * Abuse guard rails for the GraphQL endpoint, applied after the standard
 * validation: bounded depth, bounded size, bounded page size. Together they put
 * a ceiling on the work one request can ask of PostgreSQL.
 */

export const MAX_PAGE_SIZE = 1000;
export const MAX_DEPTH = 12;
export const MAX_SELECTIONS = 1000;
const PAGE_ARGUMENTS = new Set(["first", "last"]);

const pageSizeMessage = (name: string, value: number) =>
  `\`${name}\` is ${value}; pages are at most ${MAX_PAGE_SIZE} rows. Paginate with \`after\`/\`before\` cursors.`;

/** Literal `first`/`last` over the maximum. */
const maxPageSizeRule: ValidationRule = (context: ValidationContext): ASTVisitor => ({
  Argument(node) {
    if (!PAGE_ARGUMENTS.has(node.name.value) || node.value.kind !== Kind.INT) return;
    const value = Number(node.value.value);
    if (value > MAX_PAGE_SIZE) {
      context.reportError(
        new GraphQLError(pageSizeMessage(node.name.value, value), {
          nodes: [node],
          extensions: { code: "PAGE_TOO_LARGE" },
        }),
      );
    }
  },
});

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
      if (selection.kind === Kind.FIELD) count += 1 + (selection.selectionSet ? selectionCount(selection.selectionSet, expanding) : 0);
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
  depthLimit({
    maxDepth: MAX_DEPTH,
    maxListDepth: 4,
    maxSelfReferentialDepth: 2,
    revealDetails: true,
  }),
  maxSelectionsRule,
  maxPageSizeRule,
];

/**
 * `first: $n` with `$n` over the maximum, whether sent in `variables` or taken
 * from the operation's default (`query($n: Int = 5000)`); checked once
 * variables are known (see `pageSizeVariablesGuard`).
 */
export function checkPageSizeVariables(
  document: DocumentNode,
  variableValues: Record<string, unknown>,
): GraphQLError | undefined {
  const pageVariables = new Set<string>();
  const defaults = new Map<string, number>();
  visit(document, {
    Argument(node) {
      if (PAGE_ARGUMENTS.has(node.name.value) && node.value.kind === Kind.VARIABLE) pageVariables.add(node.value.name.value);
    },
    VariableDefinition(node) {
      if (node.defaultValue?.kind === Kind.INT) defaults.set(node.variable.name.value, Number(node.defaultValue.value));
    },
  });
  for (const name of pageVariables) {
    const value = variableValues[name] ?? defaults.get(name);
    if (typeof value === "number" && value > MAX_PAGE_SIZE) {
      return new GraphQLError(pageSizeMessage(`$${name}`, value), { extensions: { code: "PAGE_TOO_LARGE" } });
    }
  }
  return undefined;
}

export const HeraldGuardsPlugin: GraphileConfig.Plugin = {
  name: "HeraldGuardsPlugin",
  description: "Depth, size and page-size limits for every GraphQL operation.",
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

/**
 * Express middleware in front of /graphql: rejects `first: $n` with `$n` over
 * the maximum, which validation cannot see. Runs before Grafast so the
 * client gets a 400 like any other invalid request (a Grafast middleware that
 * throws would surface as a 500).
 */
export const pageSizeVariablesGuard: RequestHandler = (req, res, next) => {
  const body = req.body as { query?: unknown; variables?: unknown } | undefined;
  // Parsing is for queries that could pass a page size in a variable; Grafserv
  // parses (and caches) every query anyway, so skip the rest cheaply.
  if (typeof body?.query !== "string" || !body.query.includes("$") || !/\b(first|last)\b/.test(body.query)) {
    return next();
  }
  const variables = typeof body.variables === "object" && body.variables !== null ? body.variables : {};
  let document: DocumentNode;
  try {
    document = parse(body.query);
  } catch {
    return next(); // Grafserv reports syntax errors itself.
  }
  const error = checkPageSizeVariables(document, variables as Record<string, unknown>);
  if (!error) return next();
  res.status(400).json({ errors: [{ message: error.message, extensions: error.extensions }] });
};
