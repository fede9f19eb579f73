import { ROLES } from "../db/urls.ts";

/**
 * The catalog rules of `herald doctor`: queries that return one row per
 * offending object (RLS, policies, roles, definer functions, views, keys,
 * function settings). What the catalog cannot show — whether a policy that
 * looks right really confines a role — is for src/doctor/probes.ts.
 */

export interface Check {
  name: string;
  description: string;
  sql: string;
}

const EXPOSED = `('herald_public', 'herald_hidden')`;
const APP_ROLES = `('${ROLES.owner}', '${ROLES.authenticator}', '${ROLES.member}', '${ROLES.admin}', '${ROLES.worker}')`;
const REQUEST_ROLES = `('${ROLES.authenticator}', '${ROLES.member}', '${ROLES.admin}', '${ROLES.worker}')`;
const TENANT_ROLES = [ROLES.member, ROLES.admin, ROLES.worker];
const REQUEST_ROLES_ARRAY = `array['${[ROLES.authenticator, ...TENANT_ROLES].join("', '")}']`;
/** What a function's SET clause may set: where it looks names up and how it plans, nothing about who is asking. */
const ALLOWED_FUNCTION_SETTINGS = `('search_path', 'plan_cache_mode')`;
const TENANT_ROLES_ARRAY = `array['${TENANT_ROLES.join("', '")}']`;

/** Tables that are global mappings by design (a number, a key, a user, a tenant), so carry no tenant_id. */
const GLOBAL_TABLES = `('herald_public.tenants', 'herald_public.users')`;
/**
 * Unique keys that may omit tenant_id: a value that identifies its tenant
 * (an API key's hash). A sender number is unique across tenants only once
 * verified: a partial unique index, not a constraint, so not listed here.
 */
const GLOBAL_UNIQUE_KEYS = `('herald_public.api_keys/api_keys_secret_hash_key')`;
/** Tables (plain and partitioned) of the exposed schemas, as a FROM item named `c`. */
const EXPOSED_TABLES = `(select c.* from pg_class c join pg_namespace n on n.oid = c.relnamespace
                          where n.nspname in ${EXPOSED} and c.relkind in ('r', 'p')) c`;
/** Tenant-owned tables: exposed tables with a tenant_id column (its attnum), as a FROM item. */
const TENANT_TABLES = `(select a.attrelid as relid, a.attnum from pg_attribute a
                         where a.attname = 'tenant_id' and not a.attisdropped
                           and a.attrelid in (select c.oid from ${EXPOSED_TABLES}))`;
/** Policies on tables of the exposed schemas, as a FROM item named `p`. */
const EXPOSED_POLICIES = `(select p.* from pg_policy p join pg_class c on c.oid = p.polrelid
                            join pg_namespace n on n.oid = c.relnamespace where n.nspname in ${EXPOSED}) p`;
/** Keep the rows of a query whose `detail` (built with concat_ws of CASEs) names at least one fault. */
const faulty = (query: string) => `select object, detail from (${query}) f where detail <> ''`;

/** The only role memberships Herald creates: the authenticator may become a request role. */
const ALLOWED_MEMBERSHIPS = `(${[ROLES.member, ROLES.admin, ROLES.worker].map((r) => `('${ROLES.authenticator}', '${r}')`).join(", ")})`;

export const CHECKS: Check[] = [
  {
    name: "rls-enabled",
    description: "every table in herald_public/herald_hidden has row-level security enabled and forced",
    sql: faulty(`
      select c.oid::regclass::text as object,
             concat_ws(', ', case when not c.relrowsecurity then 'RLS not enabled' end,
                             case when not c.relforcerowsecurity then 'RLS not forced' end) as detail
        from ${EXPOSED_TABLES}`),
  },
  {
    name: "has-policy",
    description: "every table in herald_public/herald_hidden has at least one policy",
    sql: `
      select c.oid::regclass::text as object, 'no policies: with RLS on, nobody can use it; with RLS off, everybody can' as detail
        from ${EXPOSED_TABLES}
       where not exists (select 1 from pg_policy p where p.polrelid = c.oid)`,
  },
  {
    name: "no-for-all-policy",
    description: "policies are per operation, never FOR ALL",
    sql: `
      select p.polrelid::regclass::text || ' / ' || p.polname as object, 'policy is FOR ALL' as detail
        from ${EXPOSED_POLICIES} where p.polcmd = '*'`,
  },
  {
    name: "no-public-policy",
    description: "every policy names its roles (none apply to PUBLIC)",
    sql: `
      select p.polrelid::regclass::text || ' / ' || p.polname as object, 'policy applies to PUBLIC' as detail
        from ${EXPOSED_POLICIES} where 0::oid = any (p.polroles)`,
  },
  {
    name: "role-attributes",
    description: "no Herald role is a superuser or has BYPASSRLS",
    sql: faulty(`
      select r.rolname::text as object,
             concat_ws(', ', case when r.rolsuper then 'SUPERUSER' end, case when r.rolbypassrls then 'BYPASSRLS' end) as detail
        from pg_roles r where r.rolname in ${APP_ROLES}`),
  },
  {
    name: "authenticator-noinherit",
    description: "herald_authenticator is NOINHERIT (it must SET ROLE, never hold request roles' rights)",
    sql: `
      select r.rolname::text as object, 'INHERIT is set' as detail
        from pg_roles r where r.rolname = '${ROLES.authenticator}' and r.rolinherit`,
  },
  {
    name: "request-roles-own-nothing",
    description: "request roles own no tables, views, functions or schemas (owners bypass grants and may disable RLS)",
    sql: `
      select c.oid::regclass::text as object, 'owned by ' || pg_get_userbyid(c.relowner) as detail
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
       where pg_get_userbyid(c.relowner) in ${REQUEST_ROLES} and n.nspname not like 'pg_%'
      union all
      select p.oid::regprocedure::text, 'owned by ' || pg_get_userbyid(p.proowner)
        from pg_proc p where pg_get_userbyid(p.proowner) in ${REQUEST_ROLES}
      union all
      select n.nspname::text, 'owned by ' || pg_get_userbyid(n.nspowner)
        from pg_namespace n where pg_get_userbyid(n.nspowner) in ${REQUEST_ROLES}`,
  },
  {
    name: "security-definer",
    description:
      "SECURITY DEFINER functions live in herald_private, pin search_path to '' and are not executable by PUBLIC",
    sql: faulty(`
      select p.oid::regprocedure::text as object,
             concat_ws(', ',
               case when n.nspname <> 'herald_private' then 'in ' || n.nspname || ' (definer helpers belong in herald_private)' end,
               case when not coalesce(p.proconfig @> array['search_path=""'], false)
                    then 'search_path not pinned to an empty path' end,
               case when p.proacl is null or exists (select 1 from aclexplode(p.proacl) a where a.grantee = 0)
                    then 'executable by PUBLIC' end) as detail
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
       where p.prosecdef
         and n.nspname not in ('pg_catalog', 'information_schema')
         -- functions that belong to an extension are the extension's business
         and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e')`),
  },
  {
    name: "views-security-invoker",
    description:
      "views in herald_public/herald_hidden, and any view a request role can reach in any schema, run with the caller's rights (security_invoker)",
    sql: `
      select c.oid::regclass::text as object,
             concat_ws(', ',
               case when c.relkind = 'm' then 'materialized view (cannot apply RLS)' else 'view lacks security_invoker' end,
               case when reachable.roles is not null then 'reachable by ' || reachable.roles end,
               case when c.relkind = 'v' then 'runs as ' || pg_get_userbyid(c.relowner) ||
                 case when r.rolsuper or r.rolbypassrls then ' (bypasses RLS)' else '' end end) as detail
        from pg_class c join pg_namespace n on n.oid = c.relnamespace join pg_roles r on r.oid = c.relowner
        left join lateral (
          select string_agg(role, ', ' order by role) as roles from unnest(${REQUEST_ROLES_ARRAY}) role
           where has_table_privilege(role, c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')
              or has_any_column_privilege(role, c.oid, 'SELECT, INSERT, UPDATE')) reachable on true
       where c.relkind in ('v', 'm') and n.nspname not in ('pg_catalog', 'information_schema')
         and (n.nspname in ${EXPOSED} or reachable.roles is not null)
         and (c.relkind = 'm' or not coalesce(
               (select option_value::boolean from pg_options_to_table(c.reloptions) where option_name = 'security_invoker'),
               false))`,
  },
  {
    name: "function-settings",
    description:
      "no function, in any schema, has a SET clause other than search_path or plan_cache_mode (SET role, session_authorization or a jwt.claims/herald setting would switch whoever calls it into another identity or tenant)",
    sql: `
      select p.oid::regprocedure::text as object, 'SET ' || cfg || case when p.prosecdef then ' (security definer)' else '' end as detail
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace, unnest(p.proconfig) cfg
       where n.nspname not in ('pg_catalog', 'information_schema')
         and split_part(cfg, '=', 1) not in ${ALLOWED_FUNCTION_SETTINGS}
         and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e')`,
  },
  {
    name: "tenant-foreign-keys",
    description: "every foreign key between tenant-owned tables includes tenant_id on both sides",
    sql: `
      select con.conrelid::regclass::text || ' / ' || con.conname as object,
             'references tenant-owned ' || con.confrelid::regclass::text || ' without matching tenant_id' as detail
        from pg_constraint con
        join ${TENANT_TABLES} src on src.relid = con.conrelid
        join ${TENANT_TABLES} dst on dst.relid = con.confrelid
       where con.contype = 'f'
         and not exists (
           select 1 from unnest(con.conkey, con.confkey) as k(local_col, foreign_col)
            where k.local_col = src.attnum and k.foreign_col = dst.attnum)`,
  },
  {
    name: "tenant-column",
    description: "every table in herald_public/herald_hidden carries tenant_id, except the global mappings",
    sql: `
      select c.oid::regclass::text as object, 'no tenant_id column' as detail
        from ${EXPOSED_TABLES}
       where c.oid::regclass::text not in ${GLOBAL_TABLES}
         and c.oid not in (select relid from ${TENANT_TABLES} t)`,
  },
  {
    name: "tenant-unique-keys",
    description: "every primary key and unique constraint of a tenant-owned table includes tenant_id",
    sql: `
      select con.conrelid::regclass::text || ' / ' || con.conname as object, 'key without tenant_id' as detail
        from pg_constraint con join ${TENANT_TABLES} t on t.relid = con.conrelid
       where con.contype in ('p', 'u') and not (t.attnum = any (con.conkey))
         and con.conrelid::regclass::text || '/' || con.conname not in ${GLOBAL_UNIQUE_KEYS}`,
  },
  {
    name: "tenant-policies",
    description:
      "every policy for herald_member/herald_worker restricts rows by current_tenant_id() or current_user_id()",
    sql: `
      select polrelid::regclass::text || ' / ' || polname as object,
             'a member/worker policy whose ' || case when polcmd = 'a' then 'WITH CHECK' else 'USING' end ||
             ' does not mention current_tenant_id() or current_user_id()' as detail
        from (select p.*, pg_get_expr(p.polqual, p.polrelid) as using_expr,
                     pg_get_expr(p.polwithcheck, p.polrelid) as check_expr
                from ${EXPOSED_POLICIES}
               where p.polroles && array(select oid from pg_roles where rolname in ('${ROLES.member}', '${ROLES.worker}'))) p
       where (polcmd <> 'a' and coalesce(using_expr, '') !~ 'current_(tenant|user)_id\\(')
          or (polcmd in ('a', 'w') and coalesce(check_expr, using_expr, '') !~ 'current_(tenant|user)_id\\(')`,
  },
  {
    name: "role-memberships",
    description: "Herald's roles are members of no role, except the authenticator of the three request roles",
    sql: `
      select pg_get_userbyid(m.member)::text as object, 'is a member of ' || pg_get_userbyid(m.roleid) as detail
        from pg_auth_members m
       where pg_get_userbyid(m.member) in ${APP_ROLES}
         and (pg_get_userbyid(m.member), pg_get_userbyid(m.roleid)) not in ${ALLOWED_MEMBERSHIPS}`,
  },
  {
    name: "private-schema-grants",
    description: "request roles have no rights in herald_private (only the authenticator, on its helpers)",
    sql: `
      select 'herald_private' as object, r || ' has USAGE' as detail
        from unnest(${TENANT_ROLES_ARRAY}) r where has_schema_privilege(r, 'herald_private', 'USAGE')
      union all
      select c.oid::regclass::text, r || ' has ' || priv
        from pg_class c, unnest(${TENANT_ROLES_ARRAY}) r, unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE']) priv
       where c.relnamespace = 'herald_private'::regnamespace and c.relkind in ('r', 'v', 'm', 'p')
         and has_table_privilege(r, c.oid, priv)
      union all
      select p.oid::regprocedure::text, r || ' may EXECUTE'
        from pg_proc p, unnest(${TENANT_ROLES_ARRAY}) r
       where p.pronamespace = 'herald_private'::regnamespace and p.prokind = 'f'
         and has_function_privilege(r, p.oid, 'EXECUTE')
         and p.prorettype <> 'trigger'::regtype`,
  },
  {
    name: "no-public-grants",
    description: "no table, view or sequence in Herald's schemas grants anything to PUBLIC",
    sql: `
      select c.oid::regclass::text as object, 'PUBLIC has ' || a.privilege_type as detail
        from pg_class c join pg_namespace n on n.oid = c.relnamespace, aclexplode(c.relacl) a
       where n.nspname like 'herald\\_%' and a.grantee = 0`,
  },
  {
    name: "no-truncate",
    description: "no request role may TRUNCATE any table, in any schema (TRUNCATE ignores row-level security)",
    sql: `
      select c.oid::regclass::text as object, role || ' may TRUNCATE' as detail
        from pg_class c join pg_namespace n on n.oid = c.relnamespace, unnest(${REQUEST_ROLES_ARRAY}) role
       where c.relkind in ('r', 'p', 'f') and n.nspname not in ('pg_catalog', 'information_schema')
         and has_table_privilege(role, c.oid, 'TRUNCATE')`,
  },
  {
    name: "no-context-switching",
    description: "no function in herald_public/herald_hidden changes the role or the tenant claims",
    sql: `
      select p.oid::regprocedure::text as object, 'changes the role or a jwt.claims setting' as detail
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
       where n.nspname in ${EXPOSED}
         and p.prosrc ~* '(set_config|\\mset\\s+(local\\s+|session\\s+)?(role|"?jwt\\.)|\\mreset\\s+(role|all)\\M)'`,
  },
];
