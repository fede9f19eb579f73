import { lambda, SafeError, type Step } from "postgraphile/grafast";
import { DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE } from "./limits.ts";

/**
 * Every paginated connection and list reads at most a page: `DEFAULT_PAGE_SIZE`
 * rows when the operation gives neither `first` nor `last` (nor gives them as
 * null), never more than `MAX_PAGE_SIZE`, never a negative count. Validation
 * refuses literal and variable page sizes out of range before execution
 * (src/api/guards.ts); this is where the bound is applied to the SQL, so it
 * holds whatever reaches the plan.
 *
 * PostGraphile applies `first`/`last` through each argument's own plan, which
 * runs only when the argument is given. Here those argument plans are removed
 * and the field's plan sets both from one step that sees both arguments: a
 * missing `first` may only default when `last` is missing too.
 */

type PageSizeTarget = Step & { setFirst(step: Step): void; setLast(step: Step): void };

const isPageSizeTarget = (step: unknown): step is PageSizeTarget =>
  step instanceof Object &&
  typeof (step as PageSizeTarget).setFirst === "function" &&
  typeof (step as PageSizeTarget).setLast === "function";

/**
 * Where the page size goes: a connection's own collection (a PgSelect, which
 * paginates itself) rather than the connection step, which would then fetch
 * rows even for a connection asked only for `totalCount`; a list's step itself.
 */
function pageSizeTarget(step: unknown): PageSizeTarget | undefined {
  const collection = (step as { getSubplan?: () => unknown }).getSubplan?.();
  if (isPageSizeTarget(collection)) return collection;
  return isPageSizeTarget(step) ? step : undefined;
}

function checkedPageSize(name: string, value: unknown): number | null {
  if (value == null) return null;
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0) {
    throw new SafeError(`\`${name}\` must be a whole number from 0 to ${MAX_PAGE_SIZE}.`, {
      code: "INVALID_INPUT",
      field: name,
    });
  }
  if (value > MAX_PAGE_SIZE) {
    throw new SafeError(
      `\`${name}\` is ${value}; pages are at most ${MAX_PAGE_SIZE} rows. Paginate with \`after\`/\`before\` cursors.`,
      {
        code: "PAGE_TOO_LARGE",
        field: name,
      },
    );
  }
  return value;
}

const pageFirst = ([first, last]: readonly unknown[]) => {
  const checkedFirst = checkedPageSize("first", first);
  const checkedLast = checkedPageSize("last", last);
  return checkedFirst === null && checkedLast === null ? DEFAULT_PAGE_SIZE : checkedFirst;
};
const pageLast = ([last]: readonly unknown[]) => checkedPageSize("last", last);

const isPaginated = (scope: { isPgFieldConnection?: boolean; isPgFieldSimpleCollection?: boolean }) =>
  Boolean(scope.isPgFieldConnection || scope.isPgFieldSimpleCollection);

const pageSizeDescription = (name: "first" | "last") =>
  `Only read the ${name} \`n\` values of the set (at most ${MAX_PAGE_SIZE}; without \`first\` and \`last\`, the first ${DEFAULT_PAGE_SIZE}).`;

export const PageSizePlugin: GraphileConfig.Plugin = {
  name: "HeraldPageSizePlugin",
  description: "A default and a maximum page size for every connection and list.",
  version: "0.1.0",
  after: ["PgFirstLastBeforeAfterArgsPlugin"],
  schema: {
    hooks: {
      GraphQLObjectType_fields_field(field, _build, context) {
        const originalPlan = field.plan;
        if (!isPaginated(context.scope) || !originalPlan) return field;
        return {
          ...field,
          plan($parent, fieldArgs, info) {
            const $result = originalPlan($parent, fieldArgs, info);
            const $first = fieldArgs.getRaw("first") as Step | undefined;
            const $target = pageSizeTarget($result);
            // A field of this kind without pagination arguments (a unique row): nothing to bound.
            if (!$first || !$target) return $result;
            const $last = (fieldArgs.getRaw("last") as Step | undefined) ?? null;
            $target.setFirst(lambda($last ? [$first, $last] : [$first], pageFirst, true));
            if ($last) $target.setLast(lambda([$last], pageLast, true));
            return $result;
          },
        };
      },
      GraphQLObjectType_fields_field_args(args, _build, context) {
        if (!isPaginated(context.scope) || !args.first) return args;
        // The field's plan (above) applies these; applying them again would fail loudly ("setFirst already called").
        const bounded = Object.entries(args).map(([name, spec]) =>
          name === "first" || name === "last"
            ? [name, { ...spec, applyPlan: undefined, description: pageSizeDescription(name) }]
            : [name, spec],
        );
        return Object.fromEntries(bounded) as typeof args;
      },
    },
  },
};
