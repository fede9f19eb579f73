import { withPgClient, type PgClient } from "postgraphile/@dataplan/pg";
import { operationPlan, SafeError, type Step } from "postgraphile/grafast";
import { normalizeEmail, normalizePhone } from "../contacts/normalize.ts";
import { tenantDefaultCountry, type RunQuery } from "../contacts/store.ts";

/**
 * `sendMessage(to: …)` takes an address as people write it — `+1 415 555
 * 2671`, `(415) 555-2671`, ` Ada@Example.ORG ` — and SQL hashes exactly what
 * it is given. So before herald_public.send_message sees `to`, this plugin
 * normalises it as contact imports do (src/contacts/normalize.ts: E.164 by
 * libphonenumber in the tenant's default country; emails trimmed and
 * lower-cased), in the request's transaction. An address that is neither
 * fails here, on the field `to`; herald_hidden.contact_for_address accepts
 * only the normalised forms and checks the address fits the channel.
 */

const isToArgument = (path: unknown) =>
  Array.isArray(path) && path.length === 2 && path[0] === "input" && path[1] === "to";

type FieldArgs = { getRaw(path?: string | readonly (string | number)[]): Step };

export function normalizeAddress(raw: string, defaultCountry: () => Promise<string>): Promise<string> {
  if (raw.includes("@")) {
    const email = normalizeEmail(raw);
    if ("error" in email) return Promise.reject(toError(email.error));
    return Promise.resolve(email.value);
  }
  return defaultCountry().then((country) => {
    const phone = normalizePhone(raw, country);
    if ("error" in phone) throw toError(phone.error);
    return phone.value;
  });
}

const toError = (message: string) => new SafeError(`to ${message}`, { code: "INVALID_INPUT", field: "to" });

export const SendToAddressPlugin: GraphileConfig.Plugin = {
  name: "HeraldSendToAddressPlugin",
  description: "Normalises sendMessage's `to` (phone or email) like contact imports before SQL hashes it.",
  version: "0.1.0",
  schema: {
    hooks: {
      GraphQLObjectType_fields_field(field, build, context) {
        const { isRootMutation, fieldName } = context.scope as { isRootMutation?: boolean; fieldName?: string };
        if (!isRootMutation || fieldName !== "sendMessage" || !field.plan) return field;
        const executor = build.input.pgRegistry.pgResources.contacts?.executor;
        if (!executor) throw new Error("SendToAddressPlugin: herald_public.contacts is not in the schema");
        const plan = field.plan as (parent: Step, fieldArgs: FieldArgs, info: unknown) => Step;
        return {
          ...field,
          plan(parent: Step, fieldArgs: FieldArgs, info: unknown) {
            const normalized = new Proxy(fieldArgs, {
              get(target, property) {
                if (property === "getRaw") {
                  return (path?: string | readonly (string | number)[]) => {
                    const $raw = target.getRaw(path);
                    if (!isToArgument(path)) return $raw;
                    // Where the function's arguments are built (PostGraphile bakes them in the root layer).
                    return operationPlan().withRootLayerPlan(() =>
                      withPgClient(executor, $raw, async (client: PgClient, raw: unknown) => {
                        if (raw === null || raw === undefined) return raw;
                        const run: RunQuery = async <T>(text: string, values: unknown[], name?: string) =>
                          (await client.query<T>({ text, values, name })).rows as T[];
                        return normalizeAddress(String(raw), async () => (await tenantDefaultCountry(run)) ?? "US");
                      }),
                    );
                  };
                }
                const value: unknown = Reflect.get(target, property, target);
                return typeof value === "function" ? (value as (...a: unknown[]) => unknown).bind(target) : value;
              },
            });
            return plan(parent, normalized, info);
          },
        } as typeof field;
      },
    },
  },
};
