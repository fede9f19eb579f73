/**
 * One convention for mutation payloads: the object a mutation returns is the
 * payload field named after its GraphQL type, in camelCase — `message`,
 * `tenant`, `emailDomain`, `providerAccount`, `webhookEndpoint` — as
 * PostGraphile names it for create, update and delete. A mutation returning a
 * bare value (an id) returns it as `result`.
 *
 * Custom mutations (SQL functions) name theirs `result` unless the function
 * says otherwise (`@resultFieldName`). Where that name differs from the
 * convention, this plugin adds the conventional field, with the same plan,
 * and keeps the old one, deprecated, so that existing clients keep working.
 */

const lowerFirst = (name: string) => name.charAt(0).toLowerCase() + name.slice(1);

export const PayloadNamesPlugin: GraphileConfig.Plugin = {
  name: "HeraldPayloadNamesPlugin",
  description: "Names every mutation payload's object after its type; the older names stay, deprecated.",
  version: "0.1.0",
  schema: {
    hooks: {
      GraphQLObjectType_fields(fields, build, context) {
        const { isMutationPayload, pgTypeResource } = context.scope as {
          isMutationPayload?: boolean;
          pgTypeResource?: { extensions?: { tags?: { resultFieldName?: unknown } } };
        };
        if (!isMutationPayload || !pgTypeResource) return fields;
        const current = String(pgTypeResource.extensions?.tags?.resultFieldName ?? "result");
        const field = fields[current];
        if (!field) return fields;
        const returned = build.graphql.getNamedType(field.type);
        if (!build.graphql.isObjectType(returned)) return fields;
        const conventional = lowerFirst(returned.name);
        if (conventional === current || fields[conventional]) return fields;
        return {
          ...fields,
          [current]: {
            ...field,
            deprecationReason: `Use \`${conventional}\`, named after its type like every payload's.`,
          },
          [conventional]: { ...field, description: `The \`${returned.name}\` this mutation returns.` },
        };
      },
    },
  },
};
