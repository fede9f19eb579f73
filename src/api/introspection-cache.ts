import {
  executeSync,
  getIntrospectionQuery,
  getOperationAST,
  Kind,
  parse,
  type DocumentNode,
  type ExecutionResult,
  type GraphQLSchema,
  type SelectionSetNode,
} from "postgraphile/graphql";

/**
 * Answers a repeated introspection operation from memory. Grafast answers
 * `__schema`/`__type` through graphql-js, synchronously: the full
 * `getIntrospectionQuery()` takes the API process's one thread for 100–200 ms
 * of CPU (several times that in wall time on a loaded machine), and every
 * other request waits behind it. The schema does not change while the process
 * runs (no watch mode), and introspection reads no rows and depends on no
 * identity, so its result depends on the query text and variables alone.
 *
 * The cache is filled as the schema is built (at start-up) for what tools
 * send most, `getIntrospectionQuery()` with its default options, so even the
 * first such request takes no long turn on the event loop.
 */

const INTROSPECTION_FIELDS = new Set(["__schema", "__type", "__typename"]);
/** Distinct introspection operations kept: enough for the tools in use, small enough not to grow. */
const MAX_CACHED = 32;

const cache = new WeakMap<GraphQLSchema, Map<string, ExecutionResult>>();

function onlyIntrospection(selectionSet: SelectionSetNode, document: DocumentNode, seen = new Set<string>()): boolean {
  return selectionSet.selections.every((selection) => {
    if (selection.kind === Kind.FIELD) return INTROSPECTION_FIELDS.has(selection.name.value);
    if (selection.kind === Kind.INLINE_FRAGMENT) return onlyIntrospection(selection.selectionSet, document, seen);
    const name = selection.name.value;
    if (seen.has(name)) return true;
    seen.add(name);
    const fragment = document.definitions.find(
      (definition) => definition.kind === Kind.FRAGMENT_DEFINITION && definition.name.value === name,
    );
    return fragment?.kind === Kind.FRAGMENT_DEFINITION && onlyIntrospection(fragment.selectionSet, document, seen);
  });
}

/** The cache key of a pure introspection operation, or undefined for anything else. */
function introspectionKey(
  document: DocumentNode,
  operationName: string | null | undefined,
  variables: unknown,
): string | undefined {
  const text = document.loc?.source.body;
  const operation = getOperationAST(document, operationName);
  if (!text || operation?.operation !== "query" || !onlyIntrospection(operation.selectionSet, document)) return;
  return JSON.stringify([text, operationName ?? null, variables ?? {}]);
}

function remember(schema: GraphQLSchema, key: string, result: ExecutionResult): void {
  let results = cache.get(schema);
  if (!results) cache.set(schema, (results = new Map()));
  if (!result.errors && results.size < MAX_CACHED) results.set(key, result);
}

/** Computes the standard introspection result once, as the schema is built. */
function warmIntrospection(schema: GraphQLSchema): void {
  const document = parse(getIntrospectionQuery());
  const key = introspectionKey(document, undefined, undefined);
  if (key) remember(schema, key, executeSync({ schema, document }));
}

const isExecutionResult = (value: unknown): value is ExecutionResult =>
  typeof value === "object" && value !== null && !(Symbol.asyncIterator in value);

export const IntrospectionCachePlugin: GraphileConfig.Plugin = {
  name: "HeraldIntrospectionCachePlugin",
  description: "Answers a repeated introspection operation from memory rather than rebuilding it.",
  version: "0.1.0",
  schema: {
    hooks: {
      finalize(schema) {
        warmIntrospection(schema);
        return schema;
      },
    },
  },
  grafast: {
    middleware: {
      execute(next, event) {
        const { schema, document, operationName, variableValues } = event.args;
        const key = introspectionKey(document, operationName, variableValues);
        if (!key) return next();
        const cached = cache.get(schema)?.get(key);
        if (cached) return cached;
        const keep = (result: Awaited<ReturnType<typeof next>>) => {
          if (isExecutionResult(result)) remember(schema, key, result);
          return result;
        };
        const result = next();
        return result instanceof Promise ? result.then(keep) : keep(result as Awaited<ReturnType<typeof next>>);
      },
    },
  },
};
