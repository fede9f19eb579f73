-- The template grammar, stated once for both of its parsers: this function
-- (which decides, when a template or an inline message is saved, whether a
-- text is valid and which variables it uses) and src/messages/render.ts
-- (which fills them in for each contact). test/template-grammar.test.ts runs
-- one table of cases, test/fixtures/template-grammar.json, against both.
--
--   text      := (literal | "{{" variable "}}")*    no other "{{" or "}}"
--   variable  := space* name space* ("|" default)?
--   name      := first_name | last_name | phone | email | external_id
--              | "attributes." [A-Za-z_][A-Za-z0-9_]*
--   default   := any characters but "{", "}" and "|"
--   space     := " " | tab | CR | LF
--
-- A "{{" pairs with the first "}}" after it. What changed from 000006:
-- "space" was `\s`, whose meaning follows the database's locale (a no-break
-- space counted under some, not others) where JavaScript's `\s` always
-- counts it; and the recorded name was trimmed of spaces only, so
-- "{{<tab>first_name}}" recorded "<tab>first_name".
--
-- Idempotent: re-applied on every `db watch` save.

create or replace function herald_hidden.template_variables(body text, field text) returns text[]
  language plpgsql immutable parallel safe
  set search_path = ''
as $$
declare
  v_token text;
  v_names text[] := '{}';
begin
  if body is null then
    return v_names;
  end if;
  for v_token in select m[1] from pg_catalog.regexp_matches(body, '\{\{(.*?)\}\}', 'g') as m loop
    if v_token !~ '^[ \t\r\n]*(first_name|last_name|phone|email|external_id|attributes\.[A-Za-z_][A-Za-z0-9_]*)[ \t\r\n]*(\|[^{}|]*)?$' then
      raise exception 'Unknown template variable "{{%}}" in %: use first_name, last_name, phone, email, external_id or attributes.<name>, optionally with |default', v_token, field
        using errcode = '22023', column = field;
    end if;
    v_names := v_names || pg_catalog.btrim(pg_catalog.split_part(v_token, '|', 1), E' \t\r\n');
  end loop;
  if pg_catalog.regexp_replace(body, '\{\{.*?\}\}', '', 'g') ~ '\{\{|\}\}' then
    raise exception 'Unclosed "{{" or stray "}}" in %', field using errcode = '22023', column = field;
  end if;
  return array(select distinct n from pg_catalog.unnest(v_names) n order by n);
end;
$$;
comment on function herald_hidden.template_variables(text, text) is
  E'The variables a template text uses, sorted; raises 22023 naming `field` for an unknown variable or a stray brace pair. Its cases, shared with src/messages/render.ts: test/fixtures/template-grammar.json.';
