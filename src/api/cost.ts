import {
  getNamedType,
  getNullableType,
  GraphQLError,
  isCompositeType,
  isListType,
  isObjectType,
  Kind,
  type ASTVisitor,
  type FieldNode,
  type FragmentDefinitionNode,
  type GraphQLCompositeType,
  type GraphQLField,
  type GraphQLSchema,
  type OperationDefinitionNode,
  type SelectionSetNode,
  type ValidationContext,
  type ValidationRule,
  type ValueNode,
} from "postgraphile/graphql";
import { DEFAULT_PAGE_SIZE, MAX_ESTIMATED_NODES, MAX_PAGE_SIZE } from "./limits.ts";

/**
 * The cost limit: how many nodes (rows) an operation can return at most,
 * estimated from the operation alone, before anything runs. Each connection
 * or list multiplies what it contains by its page size (`first`/`last`, else
 * the default page); every alias and every fragment spread counts. The page
 * size plugin (src/api/page-size-plugin.ts) makes these page sizes the real
 * ones, so the estimate is an upper bound.
 *
 * The count is linear in the enclosing page sizes, so each fragment is costed
 * once per page size it is spread under: a fragment spread exponentially
 * often costs no more to estimate than to refuse.
 */

/** Variable values, or `undefined` during validation (which is cached per query text, before variables are known). */
type Variables = Record<string, unknown> | undefined;

interface Walk {
  schema: GraphQLSchema;
  fragment(name: string): FragmentDefinitionNode | undefined;
  variables: Variables;
  variableDefaults: Map<string, ValueNode>;
  memo: Map<string, number>;
  expanding: Set<string>;
}

const isConnectionType = (type: GraphQLCompositeType): boolean =>
  isObjectType(type) && "pageInfo" in type.getFields() && "edges" in type.getFields();

/** A page-size argument's value; `undefined` when it depends on a variable not yet known. */
function argumentValue(field: FieldNode, name: string, walk: Walk): number | null | undefined {
  let value = field.arguments?.find((argument) => argument.name.value === name)?.value;
  if (value?.kind === Kind.VARIABLE) {
    const variable = value.name.value;
    if (walk.variables === undefined) return undefined;
    if (variable in walk.variables) {
      const given = walk.variables[variable];
      return typeof given === "number" ? given : null;
    }
    value = walk.variableDefaults.get(variable);
  }
  return value?.kind === Kind.INT ? Number(value.value) : null;
}

/**
 * Rows one page of this field returns at most. Unknown variables count as 0:
 * during validation the estimate is a lower bound, and the estimate with the
 * request's variables (src/api/budget.ts) decides.
 */
function pageSize(field: FieldNode, definition: GraphQLField<unknown, unknown>, walk: Walk): number {
  if (!definition.args.some((argument) => argument.name === "first")) return MAX_PAGE_SIZE;
  const first = argumentValue(field, "first", walk);
  const last = argumentValue(field, "last", walk);
  if (first === undefined || last === undefined) return 0;
  if (first === null && last === null) return DEFAULT_PAGE_SIZE;
  const bound = (n: number | null) => (n === null ? MAX_PAGE_SIZE : Math.min(Math.max(n, 0), MAX_PAGE_SIZE));
  return Math.min(bound(first), bound(last));
}

/**
 * Nodes returned per instance of `type` by this selection set. Inside a
 * connection type, its `nodes`/`edges` lists hold `connectionPage` items.
 */
function selectionCost(set: SelectionSetNode, type: GraphQLCompositeType, connectionPage: number, walk: Walk): number {
  let total = 0;
  for (const selection of set.selections) {
    if (selection.kind === Kind.FIELD) {
      total += fieldCost(selection, type, connectionPage, walk);
    } else if (selection.kind === Kind.INLINE_FRAGMENT) {
      const condition = selection.typeCondition ? walk.schema.getType(selection.typeCondition.name.value) : type;
      if (condition && isCompositeType(condition))
        total += selectionCost(selection.selectionSet, condition, connectionPage, walk);
    } else {
      total += fragmentCost(selection.name.value, connectionPage, walk);
    }
    // Far past the limit, the exact figure no longer matters.
    if (total > MAX_ESTIMATED_NODES * 1000) return total;
  }
  return total;
}

function fragmentCost(name: string, connectionPage: number, walk: Walk): number {
  const key = `${name}:${connectionPage}`;
  const known = walk.memo.get(key);
  if (known !== undefined) return known;
  const fragment = walk.fragment(name);
  // Unknown and cyclic fragments are other rules' to report.
  if (!fragment || walk.expanding.has(name)) return 0;
  const condition = walk.schema.getType(fragment.typeCondition.name.value);
  if (!condition || !isCompositeType(condition)) return 0;
  walk.expanding.add(name);
  const cost = selectionCost(fragment.selectionSet, condition, connectionPage, walk);
  walk.expanding.delete(name);
  walk.memo.set(key, cost);
  return cost;
}

function fieldCost(field: FieldNode, parent: GraphQLCompositeType, connectionPage: number, walk: Walk): number {
  // Introspection is bounded by the depth rule, and reads no rows.
  if (field.name.value.startsWith("__") || !field.selectionSet || !("getFields" in parent)) return 0;
  const definition = parent.getFields()[field.name.value];
  if (!definition) return 0;
  const type = getNamedType(definition.type);
  if (!isCompositeType(type)) return 0;
  if (isConnectionType(type)) {
    return selectionCost(field.selectionSet, type, pageSize(field, definition, walk), walk);
  }
  const inner = selectionCost(field.selectionSet, type, 0, walk);
  if (!isListType(getNullableType(definition.type))) return inner;
  const items = isConnectionType(parent) ? connectionPage : pageSize(field, definition, walk);
  return items * (1 + inner);
}

/** The estimated node count of one operation; `variables` undefined means not yet known. */
export function estimateNodes(
  schema: GraphQLSchema,
  operation: OperationDefinitionNode,
  fragment: (name: string) => FragmentDefinitionNode | undefined,
  variables: Variables,
): number {
  const root = schema.getRootType(operation.operation);
  if (!root) return 0;
  const variableDefaults = new Map<string, ValueNode>();
  for (const definition of operation.variableDefinitions ?? []) {
    if (definition.defaultValue) variableDefaults.set(definition.variable.name.value, definition.defaultValue);
  }
  return selectionCost(operation.selectionSet, root, 0, {
    schema,
    fragment,
    variables,
    variableDefaults,
    memo: new Map(),
    expanding: new Set(),
  });
}

export function nodeLimitError(estimate: number, nodes?: OperationDefinitionNode): GraphQLError {
  const shown = estimate > MAX_ESTIMATED_NODES * 1000 ? `more than ${MAX_ESTIMATED_NODES * 1000}` : String(estimate);
  return new GraphQLError(
    `This operation could return ${shown} nodes; the limit is ${MAX_ESTIMATED_NODES} (each connection counts its page size — \`first\`/\`last\`, else ${DEFAULT_PAGE_SIZE} — times the pages around it). Ask for smaller pages.`,
    {
      nodes,
      extensions: {
        code: "NODE_LIMIT_EXCEEDED",
        limit: MAX_ESTIMATED_NODES,
        estimate: Number.isFinite(estimate) ? estimate : null,
      },
    },
  );
}

/** Validation: refuses an operation whose estimate, with variables not yet known, is already over the limit. */
export const nodeLimitRule: ValidationRule = (context: ValidationContext): ASTVisitor => ({
  OperationDefinition(node) {
    const estimate = estimateNodes(
      context.getSchema(),
      node,
      (name) => context.getFragment(name) ?? undefined,
      undefined,
    );
    if (estimate > MAX_ESTIMATED_NODES) context.reportError(nodeLimitError(estimate, node));
  },
});
